"""Supervised warm start: loss goes down, identity-ish revisions, seeds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxexit.exploratory_iteration import policy
from jaxexit.exploratory_iteration.domains import (
  MODE_IMPROVE,
  PermSort,
  permsort,
)
from jaxexit.exploratory_iteration.warm_start import sft_loss, warm_start
from tests.tiers import slow

TINY = policy.PolicyConfig(d_model=32, num_layers=1, num_heads=2, mlp_hidden=64)
DOMAIN = PermSort(n=6)


def _model(params):
  return nnx.merge(policy.policy_graphdef(DOMAIN, TINY), params)


@jax.jit
def _evaluate(params, held_out):
  """SFT loss and the share of pointers greedy improve responses keep."""
  loss, metrics = sft_loss(_model(params), DOMAIN, held_out)
  prev = jnp.where(held_out.prev < 0, held_out.tasks, held_out.prev)
  mode = jnp.full(held_out.mode.shape, MODE_IMPROVE, jnp.int32)
  response, _ = policy.sample_responses(
    _model(params), DOMAIN, held_out.tasks, prev, mode, jax.random.key(8), 0.0
  )
  kept = jnp.mean(response - permsort.PTR_0 == jnp.arange(6)[None, :])
  return loss, metrics, kept


@slow
def test_sft_lowers_loss_and_teaches_identity_ish_revisions():
  init = nnx.state(policy.make_policy(DOMAIN, TINY, nnx.Rngs(0)))
  params, losses = warm_start(
    DOMAIN,
    TINY,
    jax.random.key(0),
    steps=120,
    batch=128,
    lr=3e-3,
    chunks=1,
    progress=False,
  )
  assert losses.shape == (120,)
  held_out = jax.jit(DOMAIN.sft_examples, static_argnums=1)(
    jax.random.key(99), 256
  )
  before, _, kept_before = _evaluate(init, held_out)
  after, metrics, kept_after = _evaluate(params, held_out)
  assert float(after) < 0.6 * float(before)
  assert float(jnp.mean(losses[-10:])) < float(jnp.mean(losses[:10]))
  assert set(metrics) == {"loss", "sequence_nll", "confident"}
  # Greedy improve responses mostly keep the previous answer in place
  # (the noisy reviser's most likely move), unlike the untrained policy.
  assert float(kept_after) > 0.6 and float(kept_before) < 0.3


@slow
def test_deterministic_in_the_key_vmappable_and_independent_of_chunks():
  kw = dict(steps=4, batch=16, lr=2e-3, progress=False)
  keys = jax.random.split(jax.random.key(2), 2)
  a, la = warm_start(DOMAIN, TINY, keys[1], chunks=1, **kw)
  b, lb = warm_start(DOMAIN, TINY, keys[1], chunks=1, **kw)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  # Seeds train together under vmap, in chunks; each matches its own run.
  s, ls = warm_start(DOMAIN, TINY, keys, chunks=2, **kw)
  assert ls.shape == (2, 4)
  for x, y in zip(jax.tree.leaves(s), jax.tree.leaves(a)):
    assert x.shape == (2,) + y.shape
    np.testing.assert_allclose(x[1], y, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(ls[1], la, rtol=1e-4)
  assert not np.allclose(ls[0], ls[1])


def test_bad_input():
  with pytest.raises(ValueError, match="steps"):
    warm_start(DOMAIN, TINY, jax.random.key(0), steps=0)
  with pytest.raises(ValueError, match="key"):
    warm_start(DOMAIN, TINY, jax.random.split(jax.random.key(0), (2, 2)))
  with pytest.raises(ValueError, match="lr"):
    warm_start(DOMAIN, TINY, jax.random.key(0), lr=0.0)
