"""Tests for jaxexit.rl.grpo."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxexit.rl import grpo
from tests.tiers import slow

P, G, T, V = 3, 4, 5, 6


def _rewards(seed=0):
  return jax.random.uniform(jax.random.key(seed), (P, G))


def test_config_defaults_and_errors():
  cfg = grpo.GRPOConfig()
  assert (cfg.num_generations, cfg.clip_eps, cfg.ref_update_every) == (
    8,
    0.2,
    100,
  )
  bad = [
    dict(num_generations=1),
    dict(epochs=0),
    dict(clip_eps=0.0),
    dict(clip_eps=1.5),
    dict(beta=-1e-3),
    dict(ref_alpha=1.1),
    dict(ref_alpha=-0.1),
    dict(ref_update_every=0),
    dict(loss_agg="mean"),
    dict(scale_rewards="batch"),
  ]
  for kwargs in bad:
    key = next(iter(kwargs))
    with pytest.raises(ValueError, match=key):
      grpo.GRPOConfig(**kwargs)


def test_advantages_standardised_per_group():
  adv = grpo.group_advantages(_rewards())
  np.testing.assert_allclose(adv.mean(-1), 0.0, atol=1e-6)
  np.testing.assert_allclose(adv.std(-1), 1.0, atol=1e-4)
  adv1 = grpo.group_advantages(_rewards(), ddof=1)
  np.testing.assert_allclose(jnp.std(adv1, -1, ddof=1), 1.0, atol=1e-4)
  none = grpo.group_advantages(_rewards(), scale="none")
  np.testing.assert_allclose(
    none, _rewards() - _rewards().mean(-1, keepdims=True), atol=1e-6
  )


def test_advantages_zero_for_constant_groups():
  r = jnp.array([[0.1] * G, [1.0] * G, [0.3, 0.3, 0.3, 0.7]])
  for scale in grpo.REWARD_SCALES:
    adv = grpo.group_advantages(r, scale=scale)
    assert np.all(np.isfinite(adv))
    np.testing.assert_array_equal(adv[:2], 0.0)
  g = jax.grad(lambda x: grpo.group_advantages(x)[2, 3])(r)
  assert np.all(np.isfinite(g))


def test_advantages_bad_input():
  with pytest.raises(ValueError, match="scale"):
    grpo.group_advantages(_rewards(), scale="batch")
  with pytest.raises(ValueError, match="G"):
    grpo.group_advantages(jnp.ones((2, 1)), ddof=1)


def test_kl_k3_nonnegative_and_zero_when_equal():
  a = jax.random.normal(jax.random.key(1), (P, T)) - 2
  b = jax.random.normal(jax.random.key(2), (P, T)) - 2
  assert np.all(grpo.kl_k3(a, b) >= 0)
  np.testing.assert_array_equal(grpo.kl_k3(a, a), 0.0)
  x = b - a
  np.testing.assert_allclose(
    grpo.kl_k3(a, b), np.exp(x) - x - 1, rtol=1e-5, atol=1e-7
  )


def _policy_logp(theta, tokens):
  """Per-token log-probs of a context-free softmax policy theta [T, V]."""
  logp = jax.nn.log_softmax(theta, axis=-1)  # [T, V]
  return jnp.take_along_axis(logp[None], tokens[..., None], -1)[..., 0]


def _tiny_batch(seed=0):
  k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
  theta = jax.random.normal(k1, (T, V))
  n = P * G
  tokens = jax.random.randint(k2, (n, T), 0, V)
  lengths = jax.random.randint(k3, (n,), 1, T + 1)
  mask = jnp.arange(T)[None] < lengths[:, None]
  adv = jax.random.normal(k4, (n,))
  return theta, tokens, mask, adv


@slow
def test_gradient_is_policy_gradient_at_ratio_one():
  theta, tokens, mask, adv = _tiny_batch()
  n = tokens.shape[0]
  probs = jax.nn.softmax(theta, -1)
  # ∇_θ log π(o_t) = onehot(o_t) − softmax(θ_t) at row t.
  score = jax.nn.one_hot(tokens, V) - probs[None]  # [N, T, V]
  m = mask.astype(jnp.float32)
  weights = {
    "seq_mean": m / m.sum(-1, keepdims=True) / n,
    "token_mean": m / m.sum(),
    "dr_grpo": m / (n * T),
  }
  for agg, w in weights.items():

    def loss(th, agg=agg):
      logp = _policy_logp(th, tokens)
      return grpo.grpo_loss(
        logp, jax.lax.stop_gradient(logp), adv, mask, agg=agg
      )[0]

    expected = -jnp.einsum("NT,N,NTV->TV", w, adv, score)
    np.testing.assert_allclose(jax.grad(loss)(theta), expected, atol=1e-5)
    np.testing.assert_allclose(
      loss(theta), -jnp.sum(w * adv[:, None]), atol=1e-6
    )


def test_aggregation_normalisers():
  n = 2
  mask = jnp.array([[1, 1, 1, 0], [1, 0, 0, 0]], bool)
  logp = jnp.zeros((n, 4))
  adv = jnp.array([1.0, 2.0])
  loss = lambda agg, **kw: grpo.grpo_loss(logp, logp, adv, mask, agg=agg, **kw)[
    0
  ]
  np.testing.assert_allclose(loss("seq_mean"), -(1.0 + 2.0) / 2)
  np.testing.assert_allclose(loss("token_mean"), -(3 * 1.0 + 2.0) / 4)
  np.testing.assert_allclose(loss("dr_grpo"), -(3 * 1.0 + 2.0) / (n * 4))
  np.testing.assert_allclose(
    loss("dr_grpo", max_len=10), -(3 * 1.0 + 2.0) / (n * 10)
  )
  empty = jnp.zeros_like(mask)
  assert grpo.grpo_loss(logp, logp, adv, empty)[0] == 0.0


@slow
def test_clip_path_two_epochs():
  theta, tokens, mask, adv = _tiny_batch(3)
  eps = 0.2
  logp_old = _policy_logp(theta, tokens)

  # Epoch 1 (ratio = 1, nothing clipped), then a large step so that ratios
  # leave [1 − ε, 1 + ε] for epoch 2.
  def loss_theta(th):
    return grpo.grpo_loss(
      _policy_logp(th, tokens), logp_old, adv, mask, clip_eps=eps
    )

  (_, m1), g1 = jax.value_and_grad(loss_theta, has_aux=True)(theta)
  assert m1["clip_fraction"] == 0.0 and m1["ratio_mean"] == 1.0
  theta2 = theta - 40.0 * g1
  logp_new = _policy_logp(theta2, tokens)
  loss_fn = lambda lp: grpo.grpo_loss(lp, logp_old, adv, mask, clip_eps=eps)
  (_, m2), g_tok = jax.value_and_grad(loss_fn, has_aux=True)(logp_new)
  ratio = np.exp(logp_new - logp_old)
  a = np.asarray(adv)[:, None]
  m = np.asarray(mask)
  clipped = m & (((ratio > 1 + eps) & (a > 0)) | ((ratio < 1 - eps) & (a < 0)))
  free = m & ~clipped
  assert clipped.sum() > 0 and free.sum() > 0
  g_tok = np.asarray(g_tok)
  np.testing.assert_array_equal(g_tok[clipped], 0.0)
  np.testing.assert_array_equal(g_tok[~m], 0.0)
  assert np.all(g_tok[free & (np.abs(a) > 1e-3)] != 0.0)
  np.testing.assert_allclose(
    m2["clip_fraction"], clipped.sum() / m.sum(), rtol=1e-6
  )
  assert m2["approx_kl"] > 0


def test_kl_penalty_and_errors():
  theta, tokens, mask, adv = _tiny_batch(4)
  logp = _policy_logp(theta, tokens)
  ref = logp - 0.3
  base, _ = grpo.grpo_loss(logp, logp, adv, mask)
  with_kl, metrics = grpo.grpo_loss(
    logp, logp, adv, mask, logp_ref=ref, beta=0.1
  )
  kl = grpo.kl_k3(logp, ref)
  m = mask.astype(jnp.float32)
  seq = (kl * m).sum(-1) / m.sum(-1)
  np.testing.assert_allclose(with_kl - base, 0.1 * seq.mean(), rtol=1e-5)
  np.testing.assert_allclose(
    metrics["kl_ref"], (kl * m).sum() / m.sum(), rtol=1e-5
  )
  with pytest.raises(ValueError, match="logp_ref"):
    grpo.grpo_loss(logp, logp, adv, mask, beta=0.1)
  with pytest.raises(ValueError, match="agg"):
    grpo.grpo_loss(logp, logp, adv, mask, agg="sum")
  with pytest.raises(ValueError, match="clip_eps"):
    grpo.grpo_loss(logp, logp, adv, mask, clip_eps=0.0)


def test_loss_jit_equals_eager():
  theta, tokens, mask, adv = _tiny_batch(5)
  logp = _policy_logp(theta, tokens)
  old = logp + 0.1
  f = lambda a, b: grpo.grpo_loss(
    a, b, adv, mask, logp_ref=b, beta=0.01, agg="token_mean"
  )
  eager = f(logp, old)
  jitted = jax.jit(f)(logp, old)
  np.testing.assert_allclose(eager[0], jitted[0], rtol=1e-6)


def test_reference_update():
  params = {"w": jnp.ones((2, 3)), "b": jnp.full((3,), 4.0, jnp.bfloat16)}
  ref = {"w": jnp.zeros((2, 3)), "b": jnp.zeros((3,), jnp.bfloat16)}
  half = grpo.update_reference(ref, params, 0.5)
  np.testing.assert_allclose(half["w"], 0.5)
  assert half["b"].dtype == jnp.bfloat16
  np.testing.assert_allclose(half["b"].astype(jnp.float32), 2.0)
  hard = grpo.update_reference(ref, params, 1.0)
  np.testing.assert_array_equal(hard["w"], params["w"])
  with pytest.raises(ValueError, match="alpha"):
    grpo.update_reference(ref, params, 1.5)

  step_fn = jax.jit(grpo.maybe_update_reference, static_argnums=3)
  for step, moved in [
    (0, False),
    (3, False),
    (100, True),
    (200, True),
    (101, False),
  ]:
    out = step_fn(ref, params, jnp.int32(step), 100, 1.0)
    np.testing.assert_array_equal(out["w"], params["w"] if moved else ref["w"])
  # vmapped over a seed axis of steps.
  steps = jnp.array([100, 5])
  out = jax.vmap(
    grpo.maybe_update_reference, in_axes=(None, None, 0, None, None)
  )(ref, params, steps, 100, 0.5)
  np.testing.assert_allclose(out["w"][:, 0, 0], [0.5, 0.0])
  with pytest.raises(ValueError, match="every"):
    grpo.maybe_update_reference(ref, params, 1, 0, 1.0)
