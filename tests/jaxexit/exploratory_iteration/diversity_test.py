"""Tests for jaxexit.exploratory_iteration.diversity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxexit.exploratory_iteration.diversity import diversity_coefficients


def _reference(emb, eps=1e-6):
  emb = np.asarray(emb, np.float64)
  out = np.ones(emb.shape[:2])
  for p in range(emb.shape[0]):
    d = np.linalg.norm(emb[p] - emb[p].mean(0), axis=-1)
    spread = d.max() - d.min()
    if spread >= eps:
      out[p] = d / (spread + eps)
  return out


def test_matches_reference():
  emb = jax.random.normal(jax.random.key(0), (4, 8, 5))
  np.testing.assert_allclose(
    diversity_coefficients(emb), _reference(emb), rtol=1e-5
  )
  jitted = jax.jit(diversity_coefficients)(emb)
  np.testing.assert_allclose(jitted, _reference(emb), rtol=1e-5)


def test_hand_example_is_unbounded():
  # 1-D points 0, 1, 5: centroid 2, distances 2, 1, 3, range 2.
  emb = jnp.array([[[0.0], [1.0], [5.0]]])
  np.testing.assert_allclose(
    diversity_coefficients(emb), [[1.0, 0.5, 1.5]], rtol=1e-5
  )


def test_degenerate_range_gives_one():
  same = jnp.ones((2, 4, 3))
  np.testing.assert_array_equal(diversity_coefficients(same), 1.0)
  # Two symmetric points: equal distances to the centroid, range 0.
  sym = jnp.array([[[1.0, 0.0], [-1.0, 0.0]]])
  np.testing.assert_array_equal(diversity_coefficients(sym), 1.0)
  with pytest.raises(ValueError, match="eps"):
    diversity_coefficients(same, eps=0.0)
