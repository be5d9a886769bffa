"""Tests for jaxexit.exploratory_iteration.rewards."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxexit.exploratory_iteration.rewards import improvement_reward


def test_quality_is_q_new_broadcast():
  q_new = jnp.array([[0.2, 0.9], [0.5, 0.1]])
  q_prev = jnp.array([[0.5], [0.0]])
  np.testing.assert_array_equal(improvement_reward(q_new, q_prev), q_new)


def test_normalized_delta_values():
  q_new = jnp.array([0.75, 0.25, 1.0, 0.5, 1.0, 0.0])
  q_prev = jnp.array([0.5, 0.5, 0.0, 0.5, 1.0, 1.0])
  r = improvement_reward(q_new, q_prev, "normalized_delta")
  np.testing.assert_allclose(r, [0.5, 0.0, 1.0, 0.0, 1.0, 0.0])


def test_normalized_delta_grad_finite_at_solved_prev():
  f = lambda q: improvement_reward(q, jnp.ones(2), "normalized_delta").sum()
  g = jax.grad(f)(jnp.array([0.3, 1.0]))
  np.testing.assert_array_equal(g, [1.0, 1.0])


def test_jit_and_errors():
  q_new = jax.random.uniform(jax.random.key(0), (4, 3))
  q_prev = jax.random.uniform(jax.random.key(1), (4, 1))
  f = jax.jit(improvement_reward, static_argnums=2)
  np.testing.assert_allclose(
    f(q_new, q_prev, "normalized_delta"),
    improvement_reward(q_new, q_prev, "normalized_delta"),
  )
  with pytest.raises(ValueError, match="kind"):
    improvement_reward(q_new, q_prev, "delta")
  with pytest.raises(ValueError, match="q_prev"):
    improvement_reward(q_new, q_prev + 1.0, "normalized_delta")
