"""The ExIt / GRPO training loop: compute matching, buffer use per method,
jit equals eager, bad settings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxexit.exploratory_iteration.buffer import BufferConfig
from jaxexit.exploratory_iteration.domains import make_domain
from jaxexit.exploratory_iteration.policy import (
  PolicyConfig,
  make_policy,
  policy_graphdef,
)
from jaxexit.exploratory_iteration.train import (
  METHODS,
  ExItConfig,
  init_state,
  seed_keys,
  train,
  train_iteration,
)
from jaxexit.rl.grpo import GRPOConfig
from tests.tiers import heavy

DOMAIN = make_domain("permsort", n=4)
POLICY = PolicyConfig(d_model=16, num_layers=1, num_heads=2, mlp_hidden=32)
TRAINED = [m for m in METHODS if METHODS[m] is not None]


def _cfg(method, **kw):
  return ExItConfig(
    method=method,
    iterations=4,
    prompts=4,
    grpo=GRPOConfig(num_generations=4, epochs=2),
    buffer=BufferConfig(capacity=16, min_fill=4),
    **kw,
  )


@pytest.fixture(scope="module")
def warm():
  graphdef = policy_graphdef(DOMAIN, POLICY)
  params = jax.vmap(
    lambda k: nnx.split(make_policy(DOMAIN, POLICY, nnx.Rngs(k)))[1]
  )(seed_keys(2))
  return graphdef, params


# Trains every method (~70 s on 2 cores): the tests that use it, and the
# eager iteration, are the heavy tier.
@pytest.fixture(scope="module")
def runs(warm):
  graphdef, params = warm
  return {
    m: train(
      graphdef,
      params,
      seed_keys(2),
      domain=DOMAIN,
      cfg=_cfg(m),
      chunks=2,
      progress=False,
    )
    for m in TRAINED
  }


@heavy
def test_every_method_is_compute_matched(runs):
  rollouts = {m: np.asarray(r[1]["rollouts"]) for m, r in runs.items()}
  updates = {m: np.asarray(r[1]["updates"]) for m, r in runs.items()}
  for m in TRAINED:
    np.testing.assert_array_equal(rollouts[m], 4 * 4)
    np.testing.assert_array_equal(updates[m], 2)
    assert rollouts[m].shape == (2, 4)


@heavy
def test_grpo_never_touches_the_buffer(runs):
  _, metrics, stats = runs["grpo"]
  np.testing.assert_array_equal(metrics["buffer_size"], 0)
  np.testing.assert_array_equal(metrics["replay_fraction"], 0)
  np.testing.assert_array_equal(stats["size"], 0)


@heavy
def test_curriculum_replays_base_tasks_only(runs):
  _, metrics, _ = runs["curriculum"]
  assert np.asarray(metrics["replay_fraction"]).max() > 0
  np.testing.assert_array_equal(metrics["sampled_depth"], 0)
  np.testing.assert_array_equal(metrics["divergence_fraction"], 0)


@heavy
def test_self_iteration_methods_go_deeper(runs):
  for m in ("improve", "diverge", "exit"):
    assert np.asarray(runs[m][1]["sampled_depth"]).max() > 0, m
  np.testing.assert_array_equal(runs["improve"][1]["divergence_fraction"], 0)


@heavy
def test_params_change_and_stay_finite(warm, runs):
  _, params = warm
  for m, (new, metrics, _) in runs.items():
    diffs = jax.tree.map(lambda a, b: jnp.abs(a - b).max(), new, params)
    assert max(jax.tree.leaves(diffs)) > 0, m
    assert all(np.isfinite(np.asarray(v)).all() for v in metrics.values())


@heavy
def test_jitted_iteration_equals_eager(warm):
  graphdef, params = warm
  cfg = _cfg("exit")
  state = init_state(DOMAIN, cfg, jax.tree.map(lambda x: x[0], params))
  key = jax.random.key(3)
  step = lambda s, k: train_iteration(graphdef, s, k, domain=DOMAIN, cfg=cfg)
  jitted, m_jit = jax.jit(step)(state, key)
  with jax.disable_jit():
    eager, m_eager = step(state, key)
  for name in ("quality", "reward", "learnability", "buffer_size"):
    np.testing.assert_allclose(m_jit[name], m_eager[name], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(jitted.buffer.filled, eager.buffer.filled)
  for a, b in zip(
    jax.tree.leaves(jitted.params), jax.tree.leaves(eager.params)
  ):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
  "kw, match",
  [
    (dict(method="base"), "method"),
    (dict(method="nope"), "method"),
    (dict(method="exit", p_div=1.5), "p_div"),
    (dict(method="exit", score_on="x"), "score_on"),
    (dict(method="exit", iterations=0), "iterations"),
  ],
)
def test_bad_settings(kw, match):
  with pytest.raises(ValueError, match=match):
    ExItConfig(**kw)


@heavy
def test_train_checks_the_seed_axis(warm):
  graphdef, params = warm
  with pytest.raises(ValueError, match="seed axis"):
    train(graphdef, params, seed_keys(3), domain=DOMAIN, cfg=_cfg("grpo"))
