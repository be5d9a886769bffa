"""A checkpoint restored onto a model of other shapes names the path."""

import jax
import jax.numpy as jnp
import pytest

from jaxexit import train
from jaxexit.train.checkpoint_shapes import first_shape_difference

STATE = {"a": {"w": jnp.ones((2, 3)), "b": jnp.zeros(4)}, "c": jnp.ones(5)}


def _saved(tmp_path):
  with train.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, STATE, rng=jax.random.key(0), force=True)
  return train.Checkpointer(tmp_path)


@pytest.mark.parametrize(
  "target, match",
  [
    (
      {"a": {"w": jnp.ones((2, 4)), "b": jnp.zeros(4)}, "c": jnp.ones(6)},
      r"'state/a/w' has shape \(2, 3\) in the checkpoint but \(2, 4\) in",
    ),
    (
      {"a": {"w": jnp.ones((2, 3)), "b": jnp.zeros(4)}},
      r"'state/c' is in the checkpoint but not in the model",
    ),
    (
      {**STATE, "d": jnp.ones(1)},
      r"'state/d' \(shape \(1,\)\) is not in the checkpoint",
    ),
  ],
  ids=["shape", "missing_in_model", "missing_in_checkpoint"],
)
def test_restore_names_the_first_differing_path(tmp_path, target, match):
  key = train.abstract_like(jax.random.key(0))
  with _saved(tmp_path) as ckpt:
    with pytest.raises(train.CheckpointShapeMismatch, match=match):
      ckpt.restore(1, train.abstract_like(target), abstract_rng=key)
    # Not a damaged step: the walk stops there and moves nothing.
    with pytest.raises(train.CheckpointShapeMismatch, match="step 1 in"):
      ckpt.restore_newest(train.abstract_like(target), abstract_rng=key)
    assert ckpt.all_steps() == [1]
    restored = ckpt.restore(1, train.abstract_like(STATE), abstract_rng=key)
  assert jax.tree.all(jax.tree.map(jnp.array_equal, restored.state, STATE))


def test_keys_compare_as_their_key_data():
  stored = {"k": jax.ShapeDtypeStruct((2,), jnp.uint32)}
  assert first_shape_difference(stored, {"k": jax.random.key(0)}) is None
  assert "'k' has shape (2,)" in first_shape_difference(
    stored, {"k": jax.random.split(jax.random.key(0), 3)}
  )
