"""`exit_stack`: every layout runs in every mode and matches a plain loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxexit as jx
from jaxexit.execution import adapter
from tests.jaxexit.models import modes_check

L, B, D, C = 4, 6, 8, 3


class Block(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.linear = nnx.Linear(D, D, rngs=rngs)

  def __call__(self, x):
    return x + jnp.tanh(self.linear(x))


def _head(rngs):
  return nnx.Linear(D, C, kernel_init=nnx.initializers.normal(3.0), rngs=rngs)


def _list_model(seed=0):
  rngs = nnx.Rngs(seed)
  return (
    nnx.List([Block(rngs) for _ in range(L)]),
    nnx.List([_head(rngs) for _ in range(L)]),
  )


def _stacked_model(seed=0):
  @nnx.split_rngs(splits=L)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def make(rngs):
    return Block(rngs), _head(rngs)

  return make(nnx.Rngs(seed))


def _plain_logits(blocks, heads, x):
  """[B, L, C]: every head after its block, by a Python loop."""
  out = []
  for block, head in zip(blocks, heads):
    x = block(x)
    out.append(head(x))
  return jnp.stack(out, axis=1)


def _x():
  return jax.random.normal(jax.random.key(1), (B, D))


def _median_rule(stack, params, x):
  probe = jx.simulate(stack, jx.never(), params, x)
  conf = jax.nn.softmax(probe.per_layer.logits, -1).max(-1)
  return jx.max_softmax_rule(float(jnp.median(conf)))


def test_list_layout_matches_plain_loop_and_agrees_in_every_mode():
  blocks, heads = _list_model()
  stack, params = jx.exit_stack(blocks, heads)
  x = _x()
  res = jx.simulate(stack, jx.never(), params, x)
  np.testing.assert_allclose(
    res.per_layer.logits, _plain_logits(blocks, heads, x), rtol=1e-6, atol=1e-6
  )
  modes_check.assert_stack_modes_agree(
    stack, _median_rule(stack, params, x), params, x
  )


def test_stacked_layout_matches_the_same_weights_as_a_list():
  blocks, heads = _stacked_model()
  stack, params = jx.exit_stack(blocks, heads)
  as_list = [
    nnx.List([adapter.layer_module(m, i) for i in range(L)])
    for m in (blocks, heads)
  ]
  x = _x()
  res = jx.simulate(stack, jx.never(), params, x)
  np.testing.assert_allclose(
    res.per_layer.logits, _plain_logits(*as_list, x), rtol=1e-6, atol=1e-6
  )
  modes_check.assert_stack_modes_agree(
    stack, _median_rule(stack, params, x), params, x
  )


def test_shared_indexed_and_branches_layouts():
  rngs = nnx.Rngs(0)
  block = Block(rngs)
  heads = nnx.List([_head(rngs) for _ in range(L)])
  layers = adapter.shared(block, L)
  by_index = adapter.indexed(heads, L, lambda hs, i, x: hs[0](x) * (i + 1))
  by_branch = adapter.branches(heads, L, lambda hs, i, x: hs[0](x) * (i + 1))
  x = _x()
  for side in (by_index, by_branch):
    stack, params = jx.exit_stack(layers, side)
    res = jx.simulate(stack, jx.never(), params, x)
    h, want = x, []
    for i in range(L):
      h = block(h)
      want.append(heads[0](h) * (i + 1))
    np.testing.assert_allclose(
      res.per_layer.logits, jnp.stack(want, 1), rtol=1e-6, atol=1e-6
    )


def test_equal_stacks_share_one_compiled_runner():
  """Asking twice gives an equal stack, so make_runner's cache hits."""
  blocks, heads = _stacked_model()
  rule = jx.max_softmax_rule(0.5)
  stack_a, _ = jx.exit_stack(blocks, heads)
  stack_b, _ = jx.exit_stack(blocks, heads)
  assert stack_a == stack_b and hash(stack_a) == hash(stack_b)
  assert jx.make_runner("compacted", stack_a, rule) is jx.make_runner(
    "compacted", stack_b, rule
  )
  other, _ = jx.exit_stack(*_stacked_model(seed=1))
  assert other == stack_a  # same graph, other weights: weights are params


def test_train_step_through_the_stack_updates_the_model():
  blocks, heads = _list_model()
  x, labels = _x(), jnp.arange(B) % C

  def loss(blocks, heads):
    stack, params = jx.exit_stack(blocks, heads)
    logits = jx.simulate(stack, jx.never(), params, x).per_layer.logits
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(B), :, labels])

  grads = nnx.grad(loss, argnums=(0, 1))(blocks, heads)
  norms = [
    float(jnp.linalg.norm(g["kernel"][...]))
    for g in (grads[0][0]["linear"], grads[1][L - 1])
  ]
  assert all(n > 0 for n in norms), norms


@pytest.mark.parametrize(
  "layers, heads, match",
  [
    ("not a module", None, "layers must be an nnx.Module"),
    (None, "heads", "heads must be an nnx.Module"),
    ("short", None, "disagree on the number of layers: 3 layers"),
    ("ragged", None, "stacked\\(\\) needs a module whose every parameter"),
  ],
)
def test_bad_sides_are_named(layers, heads, match):
  blocks, good_heads = _list_model()
  if layers == "short":
    layers = nnx.List(list(blocks)[:3])
  elif layers == "ragged":
    layers = _head(nnx.Rngs(0))  # not stacked: kernel [D, C], bias [C]
  elif layers is None:
    layers = blocks
  with pytest.raises(ValueError, match=match):
    jx.exit_stack(layers, good_heads if heads is None else heads)
