"""Tests for jaxexit.exits.halting (PonderNet / PALBERT)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxexit import exits
from jaxexit.exits import halting
from jaxexit.exits.outputs import ExitHeadOutput
from tests.jaxexit.exits.rule_driver import drive, unchecked
from tests.tiers import fast_only, slow

B, L = 8, 5


def _lambdas(seed=0, shape=(B, L)):
  return jax.random.uniform(jax.random.key(seed), shape, jnp.float32)


def test_halting_distribution_hand_example():
  lam = jnp.array([0.5, 0.5, 0.5])
  np.testing.assert_allclose(
    halting.halting_distribution(lam), [0.5, 0.25, 0.125]
  )
  np.testing.assert_allclose(
    halting.halting_distribution(lam, remainder="last"), [0.5, 0.25, 0.25]
  )


def test_halting_distribution_sums():
  lam = _lambdas(shape=(2, 3, L))
  p_last = halting.halting_distribution(lam, remainder="last")
  np.testing.assert_allclose(p_last.sum(-1), 1.0, atol=1e-6)
  p_none = halting.halting_distribution(lam)
  assert p_none.shape == (2, 3, L) and p_none.dtype == jnp.float32
  assert np.all(np.asarray(p_none.sum(-1)) <= 1.0 + 1e-6)
  assert np.all(np.asarray(p_none) >= 0)


def test_halting_distribution_casts_bf16_and_vmaps():
  lam = _lambdas()
  p = halting.halting_distribution(lam.astype(jnp.bfloat16))
  assert p.dtype == jnp.float32
  np.testing.assert_allclose(
    jax.vmap(halting.halting_distribution)(lam),
    halting.halting_distribution(lam),
    rtol=1e-6,
  )


def test_halting_distribution_grads_finite_at_0_and_1():
  lam = _lambdas().at[:, 1].set(1.0).at[:, 2].set(0.0)
  for remainder in halting.REMAINDERS:
    g = jax.grad(
      lambda x: jnp.sum(
        halting.halting_distribution(x, remainder=remainder)
        * jnp.arange(L)[None]
      )
    )(lam)
    assert np.all(np.isfinite(np.asarray(g)))


def test_prior_sums_to_one_and_small_lambda_puts_mass_last():
  prior = halting.truncated_geometric_prior(0.5, 3)
  np.testing.assert_allclose(prior, [0.5, 0.25, 0.25])
  for lam_p in (0.1, 0.3, 0.9):
    np.testing.assert_allclose(
      halting.truncated_geometric_prior(lam_p, 12).sum(), 1.0, atol=1e-6
    )
  tiny = halting.truncated_geometric_prior(1e-6, L)
  assert tiny[-1] > 1 - 1e-4
  assert halting.truncated_geometric_prior(0.3, 1).tolist() == [1.0]


def test_kl_nonnegative_and_zero_for_equal():
  k1, k2 = jax.random.split(jax.random.key(0))
  p = jax.nn.softmax(jax.random.normal(k1, (B, L)))
  q = jax.nn.softmax(jax.random.normal(k2, (B, L)))
  assert np.all(np.asarray(halting.kl_divergence(p, q)) >= 0)
  np.testing.assert_allclose(halting.kl_divergence(p, p), 0.0, atol=1e-6)
  # Broadcast of a [L] prior against [B, L].
  prior = halting.truncated_geometric_prior(0.2, L)
  np.testing.assert_allclose(
    halting.kl_divergence(p, prior),
    halting.kl_divergence(p, jnp.broadcast_to(prior, (B, L))),
    rtol=1e-6,
  )


def test_kl_zeros_never_nan():
  p = jnp.array([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])
  q = jnp.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
  kl = halting.kl_divergence(p, q)
  assert np.all(np.isfinite(np.asarray(kl)))
  np.testing.assert_allclose(halting.kl_divergence(p, p), 0.0, atol=1e-6)
  for fn in (
    lambda a: halting.kl_divergence(a, q).sum(),
    lambda a: halting.kl_divergence(q, a).sum(),
  ):
    assert np.all(np.isfinite(np.asarray(jax.grad(fn)(p))))


def test_ponder_kl_directions():
  p = halting.halting_distribution(_lambdas(), remainder="last")
  prior = halting.truncated_geometric_prior(0.1, L)
  pn, qn = np.asarray(p, np.float64), np.asarray(prior, np.float64)
  want_prior_p = np.sum(qn * (np.log(qn) - np.log(pn)), -1)
  want_p_prior = np.sum(pn * (np.log(pn) - np.log(qn)), -1)
  np.testing.assert_allclose(
    halting.ponder_kl(p, prior), want_prior_p, rtol=1e-4
  )
  np.testing.assert_allclose(
    halting.ponder_kl(p, prior, direction="p_prior"), want_p_prior, rtol=1e-4
  )
  with pytest.raises(ValueError, match="direction"):
    halting.ponder_kl(p, prior, direction="forward")


def test_epsilon_floor_uses_cdf_before_step():
  p = jnp.array([0.9, 0.08, 0.01, 0.01])
  np.testing.assert_allclose(
    halting.epsilon_floor(p, 0.05), [0.9, 0.08, 0.0125, 0.0125], rtol=1e-6
  )
  # Exclusive CDF [0, .25, .5, .75]; 1 - eps = 0.5: strict, so only step 3.
  p = jnp.full((4,), 0.25)
  np.testing.assert_allclose(
    halting.epsilon_floor(p, 0.5), [0.25, 0.25, 0.25, 0.125]
  )
  np.testing.assert_allclose(halting.epsilon_floor(p, 0.0), p)


def test_epsilon_floor_has_no_gradient_where_floored():
  lam = jnp.array([[0.97, 0.5, 0.5, 0.5]])
  grad = jax.grad(
    lambda x: jnp.sum(
      halting.epsilon_floor(halting.halting_distribution(x))[:, 2:]
    )
  )(lam)
  np.testing.assert_allclose(grad, 0.0)


def test_q_exit_is_strict_and_falls_back():
  p = jnp.full((1, 4), 0.25)
  assert halting.q_exit(p, 0.5).tolist() == [2]  # CDF_1 == 0.5 stays.
  assert halting.q_exit(p, 0.3).tolist() == [1]
  assert halting.q_exit(jnp.zeros((2, 4)), 0.5).tolist() == [3, 3]
  assert halting.q_exit(p, 0.5).dtype == jnp.int32


@slow
def test_jit_equals_no_jit():
  lam = _lambdas()
  p = halting.halting_distribution(lam)
  prior = halting.truncated_geometric_prior(0.1, L)
  np.testing.assert_allclose(
    jax.jit(halting.halting_distribution)(lam), p, rtol=1e-6
  )
  np.testing.assert_array_equal(
    jax.jit(halting.q_exit, static_argnames="q")(p, q=0.4),
    halting.q_exit(p, 0.4),
  )
  np.testing.assert_allclose(
    jax.jit(halting.ponder_kl)(p, prior), halting.ponder_kl(p, prior), rtol=1e-6
  )
  np.testing.assert_allclose(
    jax.jit(halting.epsilon_floor)(p), halting.epsilon_floor(p), rtol=1e-6
  )
  key = jax.random.key(3)
  np.testing.assert_array_equal(
    jax.jit(halting.sampled_exit)(key, lam), halting.sampled_exit(key, lam)
  )


def test_ponder_task_loss_hand_example():
  loss = jnp.array([[1.0, 2.0], [3.0, 4.0]])
  p = jnp.array([[0.5, 0.5], [1.0, 0.0]])
  # Example 0: 1.5, example 1: 3.0; mean 2.25.
  np.testing.assert_allclose(halting.ponder_task_loss(loss, p), 2.25)
  with pytest.raises(ValueError, match="shapes must match"):
    unchecked(halting.ponder_task_loss)(loss, p[:, :1])


def test_sampled_exit_degenerate_and_deterministic():
  key = jax.random.key(0)
  ones, zeros = jnp.ones((B, L)), jnp.zeros((B, L))
  assert halting.sampled_exit(key, ones).tolist() == [0] * B
  assert halting.sampled_exit(key, zeros).tolist() == [L - 1] * B
  lam = _lambdas()
  a = halting.sampled_exit(key, lam)
  np.testing.assert_array_equal(a, halting.sampled_exit(key, lam))
  assert np.all((np.asarray(a) >= 0) & (np.asarray(a) < L))


@pytest.mark.parametrize("q", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("case", ["random", "never", "always"])
def test_q_exit_rule_matches_vectorised(q, case):
  lam = _lambdas(seed=1, shape=(16, L)) * 0.6
  if case == "never":
    lam = jnp.zeros_like(lam)
  elif case == "always":
    lam = lam.at[:, 0].set(1.0)
  want = halting.q_exit(halting.halting_distribution(lam), q)
  out = ExitHeadOutput(halt=lam)
  got = drive(halting.q_exit_rule(q), out)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(
    drive(halting.q_exit_rule(q), out, traced_layer=True), want
  )
  if case == "never":
    assert got.tolist() == [L - 1] * 16
  if case == "always":
    assert got.tolist() == [0] * 16


@pytest.mark.parametrize(
  "case", fast_only(["random", "never", "always"], "never", "always")
)
def test_sampled_exit_rule_matches_vectorised(case):
  lam = _lambdas(seed=2, shape=(16, L)) * 0.5
  if case == "never":
    lam = jnp.zeros_like(lam)
  elif case == "always":
    lam = jnp.ones_like(lam)
  key = jax.random.key(7)
  want = halting.sampled_exit(key, lam)
  out = ExitHeadOutput(halt=lam[..., None])  # [B, L, 1] heads work too.
  rule = halting.sampled_exit_rule()
  np.testing.assert_array_equal(drive(rule, out, rule_inputs=key), want)
  np.testing.assert_array_equal(
    drive(rule, out, rule_inputs=key, traced_layer=True), want
  )


def test_bad_inputs_raise_value_error():
  lam = _lambdas()
  with pytest.raises(ValueError, match="remainder"):
    halting.halting_distribution(lam, remainder="first")
  with pytest.raises(ValueError, match="lambdas"):
    halting.halting_distribution(lam.at[0, 0].set(jnp.nan))
  for bad in (0.0, 1.0, -0.2, 1.5):
    with pytest.raises(ValueError, match="lambda_p"):
      halting.truncated_geometric_prior(bad, L)
  with pytest.raises(ValueError, match="num_layers"):
    halting.truncated_geometric_prior(0.1, 0)
  for bad in (0.0, 1.0, 1.2):
    with pytest.raises(ValueError, match="q="):
      halting.q_exit(lam, bad)
    with pytest.raises(ValueError, match="q="):
      halting.q_exit_rule(bad)
  for bad in (1.0, -0.1):
    with pytest.raises(ValueError, match="eps"):
      halting.epsilon_floor(lam, bad)
  with pytest.raises(ValueError, match=r"\[B, L\]"):
    unchecked(halting.sampled_exit)(jax.random.key(0), lam[None])
  with pytest.raises(ValueError, match="rule_inputs"):
    halting.sampled_exit_rule().init(B, None)
  with pytest.raises(ValueError, match="last"):
    unchecked(halting.kl_divergence)(lam, lam[:, :2])
  with pytest.raises(ValueError, match="halt"):
    halting.q_exit_rule(0.5).update(
      halting.q_exit_rule(0.5).init(B, None), ExitHeadOutput(logits=lam), 0
    )


@pytest.mark.parametrize(
  "num_layers,lambda_p,median", [(6, 0.19, 4), (12, 0.1, 7), (24, 0.0513, 14)]
)
def test_depth_matched_prior_keeps_the_relative_median(
  num_layers, lambda_p, median
):
  lam = exits.depth_matched_lambda_p(num_layers)
  np.testing.assert_allclose(lam, lambda_p, atol=1e-4)
  prior = np.asarray(exits.truncated_geometric_prior(lam, num_layers))
  assert np.argmax(np.cumsum(prior) > 0.5) + 1 == median
  # The literal paper value puts a 6-layer prior's median at the last layer.
  if num_layers == 6:
    literal = np.asarray(
      exits.truncated_geometric_prior(exits.prior_lambda_p("paper", 6), 6)
    )
    assert np.argmax(np.cumsum(literal) > 0.5) + 1 == 6


def test_prior_setting_bad_input():
  with pytest.raises(ValueError, match="prior='median'.*depth_matched"):
    exits.prior_lambda_p("median", 6)
  with pytest.raises(ValueError, match="num_layers"):
    exits.depth_matched_lambda_p(0)
