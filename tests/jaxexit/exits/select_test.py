"""Tests for jaxexit.exits.select."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxexit.exits import select


def test_first_exit_first_true_else_last():
  cond = jnp.array(
    [
      [False, True, True],
      [False, False, False],
      [True, False, False],
      [False, False, True],
    ]
  )
  got = select.first_exit(cond)
  assert got.tolist() == [1, 2, 0, 2] and got.dtype == jnp.int32
  assert select.first_exit(jnp.array([False])).tolist() == 0


def test_first_exit_batch_axes_and_jit():
  cond = jax.random.bernoulli(jax.random.key(0), 0.3, (2, 3, 5))
  want = np.array(
    [
      [next((i for i, c in enumerate(row) if c), 4) for row in b]
      for b in np.asarray(cond)
    ]
  )
  np.testing.assert_array_equal(select.first_exit(cond), want)
  np.testing.assert_array_equal(jax.jit(select.first_exit)(cond), want)


def test_take_at_exit_and_layers_used():
  values = jnp.arange(2 * 3 * 4).reshape(2, 3, 4)  # [B, L, C]
  exit_layer = jnp.array([2, 0], jnp.int32)
  np.testing.assert_array_equal(
    select.take_at_exit(values, exit_layer), [values[0, 2], values[1, 0]]
  )
  np.testing.assert_array_equal(
    select.take_at_exit(values[..., 0], exit_layer), [8, 12]
  )
  assert select.layers_used(exit_layer).tolist() == [3, 1]


def test_take_at_exit_extra_batch_axes():
  values = jnp.arange(2 * 2 * 3 * 2).reshape(2, 2, 3, 2)  # [B, T, L, C]
  exit_layer = jnp.array([[0, 1], [2, 2]], jnp.int32)
  got = select.take_at_exit(values, exit_layer)
  assert got.shape == (2, 2, 2)
  np.testing.assert_array_equal(got[1, 0], values[1, 0, 2])


def test_bad_shapes_raise_value_error():
  with pytest.raises(ValueError, match="values"):
    select.take_at_exit(jnp.zeros((3, 4, 2)), jnp.zeros((2,), jnp.int32))
