"""Tests for jaxexit.exits.losses."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxexit.exits import halting, losses
from tests.jaxexit.exits.rule_driver import unchecked

B, L, C = 8, 4, 3


def _logits(seed=0, shape=(B, L, C)):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _labels():
  return jax.random.randint(jax.random.key(1), (B,), 0, C)


def test_cross_entropy_per_exit_matches_optax():
  z, y = _logits(), _labels()
  ce = losses.cross_entropy_per_exit(z, y)
  assert ce.shape == (B, L) and ce.dtype == jnp.float32
  want = optax.softmax_cross_entropy_with_integer_labels(
    z, jnp.broadcast_to(y[:, None], (B, L))
  )
  np.testing.assert_allclose(ce, want, rtol=1e-5)
  # Extra batch axes and bf16 logits.
  z_bf16 = z.reshape(2, 4, L, C).astype(jnp.bfloat16)
  ce2 = losses.cross_entropy_per_exit(z_bf16, y.reshape(2, 4))
  assert ce2.shape == (2, 4, L) and ce2.dtype == jnp.float32


def test_weighted_exit_loss_and_weights():
  np.testing.assert_allclose(
    losses.pabee_weights(3), [1 / 6, 2 / 6, 3 / 6], rtol=1e-6
  )
  np.testing.assert_allclose(losses.uniform_weights(4), [0.25] * 4)
  per_layer = jnp.array([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])  # means 2, 3, 4
  np.testing.assert_allclose(
    losses.weighted_exit_loss(per_layer, losses.pabee_weights(3)),
    (2 * 1 + 3 * 2 + 4 * 3) / 6,
    rtol=1e-6,
  )
  np.testing.assert_allclose(
    losses.weighted_exit_loss(per_layer, losses.uniform_weights(3)), 3.0
  )


def test_kl_self_distillation():
  z = _logits()
  teacher = z[:, -1]
  student = jnp.broadcast_to(teacher[:, None], (B, L, C))
  np.testing.assert_allclose(
    losses.kl_self_distillation(student, teacher), 0.0, atol=1e-6
  )
  t = 2.0
  got = losses.kl_self_distillation(z, teacher, t)
  pt = jax.nn.softmax(teacher / t)[:, None]
  kl = jnp.sum(pt * (jnp.log(pt) - jax.nn.log_softmax(z / t)), -1)  # [B, L]
  np.testing.assert_allclose(got, t**2 * kl.mean(0).sum(), rtol=1e-5)
  g_teacher = jax.grad(lambda tt: losses.kl_self_distillation(z, tt, t))(
    teacher
  )
  np.testing.assert_allclose(g_teacher, 0.0)
  g_student = jax.grad(lambda s: losses.kl_self_distillation(s, teacher, t))(z)
  assert np.any(np.asarray(g_student) != 0)


def test_ponder_loss_and_grads():
  lam = jax.random.uniform(jax.random.key(2), (B, L))
  z, y = _logits(), _labels()
  prior = halting.truncated_geometric_prior(0.1, L)
  ce = losses.cross_entropy_per_exit(z, y)
  p = halting.epsilon_floor(halting.halting_distribution(lam))
  want = halting.ponder_task_loss(ce, p) + 0.5 * jnp.mean(
    halting.ponder_kl(p, prior)
  )
  np.testing.assert_allclose(
    losses.ponder_loss(ce, p, prior, 0.5), want, rtol=1e-6
  )
  np.testing.assert_allclose(
    jax.jit(losses.ponder_loss, static_argnames="direction")(
      ce, p, prior, 0.5, direction="p_prior"
    ),
    losses.ponder_loss(ce, p, prior, 0.5, direction="p_prior"),
    rtol=1e-6,
  )

  def full(lam, z, remainder):
    p = halting.halting_distribution(lam, remainder=remainder)
    return losses.ponder_loss(
      losses.cross_entropy_per_exit(z, y), p, prior, 0.5
    )

  for remainder in halting.REMAINDERS:
    # λ = 0 and 1 entries make p exactly 0 somewhere: KL must stay finite.
    lam01 = lam.at[:, 1].set(1.0).at[:2, 0].set(0.0)
    gl, gz = jax.grad(full, argnums=(0, 1))(lam01, z, remainder)
    assert np.all(np.isfinite(np.asarray(gl)))
    assert np.all(np.isfinite(np.asarray(gz)))


def test_jit_equals_no_jit():
  z, y = _logits(), _labels()
  np.testing.assert_allclose(
    jax.jit(losses.cross_entropy_per_exit)(z, y),
    losses.cross_entropy_per_exit(z, y),
    rtol=1e-6,
  )
  np.testing.assert_allclose(
    jax.jit(losses.kl_self_distillation)(z, z[:, 0], 2.0),
    losses.kl_self_distillation(z, z[:, 0], 2.0),
    rtol=1e-6,
  )


def test_bad_inputs_raise_value_error():
  z, y = _logits(), _labels()
  with pytest.raises(ValueError, match="labels"):
    unchecked(losses.cross_entropy_per_exit)(z, y[:3])
  with pytest.raises(ValueError, match="labels"):
    losses.cross_entropy_per_exit(z, y.at[0].set(C))
  with pytest.raises(ValueError, match="logits must be finite"):
    losses.cross_entropy_per_exit(z.at[0, 0, 0].set(jnp.nan), y)
  with pytest.raises(ValueError, match="weights"):
    unchecked(losses.weighted_exit_loss)(z[..., 0], jnp.ones(L + 1))
  for fn in (losses.pabee_weights, losses.uniform_weights):
    with pytest.raises(ValueError, match="num_layers"):
      fn(0)
  for bad in (0.0, -1.0):
    with pytest.raises(ValueError, match="temperature"):
      losses.kl_self_distillation(z, z[:, 0], bad)
  with pytest.raises(ValueError, match="teacher_logits"):
    unchecked(losses.kl_self_distillation)(z, z[:, 0, :2])
  prior = halting.truncated_geometric_prior(0.1, L)
  with pytest.raises(ValueError, match="beta"):
    losses.ponder_loss(z[..., 0], z[..., 0], prior, -0.5)
