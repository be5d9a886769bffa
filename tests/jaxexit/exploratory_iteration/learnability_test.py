"""Tests for jaxexit.exploratory_iteration.learnability."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxexit.exploratory_iteration import learnability as lrn


def test_binary_groups_give_p_one_minus_p():
  g = 8
  successes = jnp.arange(g + 1)
  rewards = (jnp.arange(g)[None] < successes[:, None]).astype(jnp.float32)
  p = successes / g
  np.testing.assert_allclose(
    lrn.group_learnability(rewards), p * (1 - p), atol=1e-7
  )
  ends = jnp.array([0, g])
  np.testing.assert_array_equal(lrn.group_learnability(rewards)[ends], 0.0)
  np.testing.assert_allclose(
    lrn.group_learnability(rewards, ddof=1),
    p * (1 - p) * g / (g - 1),
    atol=1e-6,
  )


def test_matches_numpy_variance_and_constant_groups_are_zero():
  r = jax.random.uniform(jax.random.key(0), (5, 8))
  np.testing.assert_allclose(
    lrn.group_learnability(r), np.var(r, -1), rtol=1e-5
  )
  np.testing.assert_array_equal(
    lrn.group_learnability(jnp.full((3, 8), 0.1)), 0.0
  )
  with pytest.raises(ValueError, match="ddof"):
    lrn.group_learnability(r, ddof=2)


def test_normalize_none_and_max():
  s = jnp.array([0.002, 0.004, -jnp.inf, 0.001])
  np.testing.assert_array_equal(lrn.normalize_scores(s), s)
  out = lrn.normalize_scores(s, "max")
  np.testing.assert_allclose(
    out[jnp.array([0, 1, 3])], [0.5, 1.0, 0.25], rtol=1e-6
  )
  assert out[2] == -jnp.inf
  zeros = jnp.zeros(3)
  np.testing.assert_array_equal(lrn.normalize_scores(zeros, "max"), zeros)


def _rank_reference(scores, valid):
  """Mid-ranks of valid scores scaled to [0, 1], plain numpy."""
  scores = np.asarray(scores, np.float64)
  out = scores.copy()
  vals = scores[valid]
  k = len(vals)
  for i in np.flatnonzero(valid):
    below = np.sum(vals < scores[i])
    equal = np.sum(vals == scores[i])
    out[i] = 1.0 if k == 1 else (below + (equal - 1) / 2) / (k - 1)
  return out


def test_rank_matches_reference_with_ties_and_invalid():
  rng = np.random.default_rng(0)
  for trial in range(5):
    s = rng.integers(0, 5, size=12).astype(np.float32) * 0.01
    valid = rng.random(12) < 0.7
    valid[trial] = True
    s[~valid] = -np.inf
    out = lrn.normalize_scores(jnp.asarray(s), "rank", jnp.asarray(valid))
    np.testing.assert_allclose(out, _rank_reference(s, valid), atol=1e-6)
  one = lrn.normalize_scores(jnp.array([0.3, -jnp.inf]), "rank")
  np.testing.assert_array_equal(one, [1.0, -np.inf])
  jitted = jax.jit(lrn.normalize_scores, static_argnums=1)(
    jnp.asarray(s), "rank", jnp.asarray(valid)
  )
  np.testing.assert_allclose(jitted, _rank_reference(s, valid), atol=1e-6)
  with pytest.raises(ValueError, match="mode"):
    lrn.normalize_scores(jnp.asarray(s), "softmax")
