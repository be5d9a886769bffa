"""Tests of the orbax checkpoint wrapper."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxexit.train import checkpoint as ckpt_lib
from jaxexit.train import step as step_lib


class WithRngs(nnx.Module):
  """Holds an `nnx.Rngs` stream, so the state has a typed key leaf."""

  def __init__(self, rngs: nnx.Rngs):
    self.linear = nnx.Linear(3, 2, rngs=rngs)
    self.dropout = nnx.Dropout(0.5, rngs=rngs)


def _state(seed=0):
  model = WithRngs(nnx.Rngs(params=seed, dropout=seed + 1))
  return step_lib.split_train_state(model, optax.adam(1e-3))


def _assert_tree_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_roundtrip_state_rng_extra(tmp_path):
  _, state = _state()
  extra = {"best_acc": jnp.asarray(0.5), "seen": jnp.arange(3)}
  rng = jax.random.key(42)
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    assert ckpt.restore_latest(ckpt_lib.abstract_like(state)) is None
    assert ckpt.save(7, state, rng=rng, extra=extra)
  _, other = _state(seed=5)
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    restored = ckpt.restore_latest(
      ckpt_lib.abstract_like(other),
      abstract_rng=ckpt_lib.abstract_like(rng),
      abstract_extra=ckpt_lib.abstract_like(extra),
    )
  assert restored.step == 7
  _assert_tree_equal(restored.state, state)
  _assert_tree_equal(restored.extra, extra)
  _assert_tree_equal(restored.rng, rng)
  assert jax.tree.structure(restored.state) == jax.tree.structure(state)


def test_save_every_and_max_to_keep(tmp_path):
  _, state = _state()
  with ckpt_lib.Checkpointer(tmp_path, save_every=5, max_to_keep=2) as ckpt:
    saved = [s for s in range(1, 21) if ckpt.save(s, state)]
    assert ckpt.save(23, state, force=True)
    ckpt.wait()
    assert saved == [5, 10, 15, 20]
    assert ckpt.all_steps() == [20, 23]
    assert ckpt.latest_step() == 23


def test_interrupted_save_is_ignored_and_cleaned(tmp_path):
  """A temporary directory left by a killed save is never restored."""
  _, state = _state()
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(10, state)
  # What a save killed before orbax's finalize leaves behind.
  torn = tmp_path / "20.orbax-checkpoint-tmp"
  (torn / "default").mkdir(parents=True)
  (torn / "default" / "half_written").write_bytes(b"\0" * 10)
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    assert ckpt.latest_step() == 10
    assert ckpt.restore_latest(ckpt_lib.abstract_like(state)).step == 10
  assert not torn.exists()


def test_restore_honours_abstract_sharding(tmp_path):
  _, state = _state()
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state)
  device = jax.devices()[0]
  abstract = ckpt_lib.abstract_like(jax.device_put(state, device))
  with ckpt_lib.Checkpointer(tmp_path) as ckpt:
    restored = ckpt.restore(1, abstract)
  assert all(x.devices() == {device} for x in jax.tree.leaves(restored.state))


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(save_every=0), "save_every=0"),
    (dict(max_to_keep=0), "max_to_keep=0"),
  ],
)
def test_bad_arguments(tmp_path, kwargs, match):
  with pytest.raises(ValueError, match=match):
    ckpt_lib.Checkpointer(os.fspath(tmp_path), **kwargs)
