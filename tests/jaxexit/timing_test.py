"""Tests for jaxexit.timing."""

import jax
import jax.numpy as jnp
import pytest

from jaxexit import timing


def test_time_fn_on_trivial_jitted_function():
  calls = []

  @jax.jit
  def add_one(x):
    return x + 1

  def counted(x):
    calls.append(1)
    return add_one(x)

  result = timing.time_fn(counted, jnp.ones((8,)), warmup=2, repeats=5)
  assert len(calls) == 7
  assert len(result.seconds) == 5
  assert all(0 < s < 5.0 for s in result.seconds)
  assert result.min == min(result.seconds)
  assert result.min <= result.median <= max(result.seconds)


def test_time_side_by_side_interleaves_candidates():
  order = []

  def make(name):
    def fn(x):
      order.append(name)
      return x * 2

    return fn

  x = jnp.ones((4,))
  result = timing.time_side_by_side(
    {"a": (make("a"), (x,)), "b": (make("b"), (x,))}, warmup=1, repeats=3
  )
  assert list(result) == ["a", "b"]
  assert all(len(t.seconds) == 3 for t in result.values())
  # Warm-up round, then rounds whose first candidate rotates.
  assert order == ["a", "b", "a", "b", "b", "a", "a", "b"]


def test_timing_rejects_bad_arguments():
  fn = jax.jit(lambda x: x)
  with pytest.raises(ValueError, match="repeats=0"):
    timing.time_fn(fn, 1.0, repeats=0)
  with pytest.raises(ValueError, match="warmup=-1"):
    timing.time_fn(fn, 1.0, warmup=-1)
  with pytest.raises(ValueError, match="candidates"):
    timing.time_side_by_side({})
