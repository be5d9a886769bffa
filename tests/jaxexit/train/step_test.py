"""Tests of the functional NNX train/eval steps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxexit.train import step as step_lib
from tests.tiers import slow


class Counter(nnx.Variable):
  """A non-Param variable the forward pass mutates."""


class Net(nnx.Module):
  def __init__(self, *, rngs: nnx.Rngs, dropout: float = 0.0):
    self.hidden = nnx.Linear(4, 16, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)
    self.out = nnx.Linear(16, 2, rngs=rngs)
    self.calls = Counter(jnp.zeros((), jnp.int32))

  def __call__(self, x, *, rng=None):
    self.calls[...] += 1
    return self.out(self.dropout(jax.nn.relu(self.hidden(x)), rngs=rng))


def loss_fn(model, batch, rng):
  pred = model(batch["x"], rng=rng)
  return jnp.mean((pred - batch["y"]) ** 2), {"pred_mean": jnp.mean(pred)}


def _batch():
  x = jax.random.normal(jax.random.key(1), (8, 4))
  return {"x": x, "y": jnp.stack([x[:, 0], -x[:, 1]], -1)}


@slow
def test_step_matches_hand_written_optax_update():
  model = Net(rngs=nnx.Rngs(0))
  tx = optax.adam(1e-2)
  params = nnx.state(model, nnx.Param)
  batch = _batch()

  def pure_loss(p):
    m = nnx.merge(nnx.graphdef(model), p, nnx.state(model, Counter), copy=True)
    return loss_fn(m, batch, None)[0]

  loss_ref, grads = jax.value_and_grad(pure_loss)(params)
  updates, _ = tx.update(grads, tx.init(params), params)
  expected = optax.apply_updates(params, updates)

  graphdef, state = step_lib.split_train_state(model, tx)
  state, metrics = step_lib.make_train_step(loss_fn)(
    graphdef, state, batch, jax.random.key(0)
  )
  new_model, opt = step_lib.merge_train_state(graphdef, state)
  np.testing.assert_allclose(metrics["loss"], loss_ref, rtol=1e-6)
  np.testing.assert_allclose(
    metrics["grad_norm"], optax.tree.norm(grads), rtol=1e-6
  )
  for a, b in zip(
    jax.tree.leaves(nnx.state(new_model, nnx.Param)), jax.tree.leaves(expected)
  ):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert int(opt.step[...]) == 1
  # The non-Param counter was mutated in the loss and written back.
  assert int(new_model.calls[...]) == 1


def test_loss_decreases_and_donation():
  model = Net(rngs=nnx.Rngs(0))
  graphdef, state = step_lib.split_train_state(model, optax.adam(3e-2))
  step = step_lib.make_train_step(loss_fn)
  batch = _batch()
  first = None
  for i in range(30):
    old = state
    state, metrics = step(graphdef, state, batch, jax.random.key(i))
    first = metrics["loss"] if first is None else first
  assert all(x.is_deleted() for x in jax.tree.leaves(old))
  assert float(metrics["loss"]) < 0.5 * float(first)
  assert set(metrics) == {"loss", "grad_norm", "pred_mean"}


def test_no_donation_keeps_input_state():
  model = Net(rngs=nnx.Rngs(0))
  graphdef, state = step_lib.split_train_state(model, optax.sgd(1e-2))
  step = step_lib.make_train_step(loss_fn, donate=False)
  step(graphdef, state, _batch(), jax.random.key(0))
  assert not any(x.is_deleted() for x in jax.tree.leaves(state))


def test_dropout_rng_is_used_and_deterministic():
  model = Net(rngs=nnx.Rngs(0), dropout=0.5)
  graphdef, state = step_lib.split_train_state(model, optax.sgd(1e-2))
  step = step_lib.make_train_step(loss_fn, donate=False)
  batch = _batch()
  _, m0 = step(graphdef, state, batch, jax.random.key(0))
  _, m0b = step(graphdef, state, batch, jax.random.key(0))
  _, m1 = step(graphdef, state, batch, jax.random.key(1))
  assert np.array_equal(m0["loss"], m0b["loss"])
  assert not np.array_equal(m0["loss"], m1["loss"])


def test_eval_step_is_deterministic_and_pure():
  model = Net(rngs=nnx.Rngs(0), dropout=0.5)
  graphdef, state = step_lib.split_train_state(model, optax.sgd(1e-2))
  eval_step = step_lib.make_eval_step(
    lambda m, b: {"loss": loss_fn(m, b, None)[0]}
  )
  batch = _batch()
  out = eval_step(graphdef, state, batch)
  # Model-only state works too, and gives the same (dropout-free) value.
  mg, ms = nnx.split(model)
  np.testing.assert_array_equal(out["loss"], eval_step(mg, ms, batch)["loss"])
  no_drop = Net(rngs=nnx.Rngs(0), dropout=0.0)
  np.testing.assert_allclose(
    out["loss"], loss_fn(no_drop, batch, None)[0], rtol=1e-6
  )
  assert int(step_lib.merge_train_state(graphdef, state)[0].calls[...]) == 0


def test_jit_step_equals_eager_maths():
  """The jitted step and the same maths run op by op agree."""
  model = Net(rngs=nnx.Rngs(3))
  graphdef, state = step_lib.split_train_state(model, optax.sgd(0.1))
  step = step_lib.make_train_step(loss_fn, donate=False)
  jitted, _ = step(graphdef, state, _batch(), jax.random.key(0))
  with jax.disable_jit():
    eager, _ = step(graphdef, state, _batch(), jax.random.key(0))
  for a, b in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", ["loss_not_scalar"])
def test_non_scalar_loss_raises(bad):
  del bad
  graphdef, state = step_lib.split_train_state(
    Net(rngs=nnx.Rngs(0)), optax.sgd(0.1)
  )
  step = step_lib.make_train_step(lambda m, b, r: (m(b["x"]), {}), donate=False)
  with pytest.raises(TypeError, match="scalar"):
    step(graphdef, state, _batch(), jax.random.key(0))
