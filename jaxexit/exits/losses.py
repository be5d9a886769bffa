"""Training losses over all exits: weighted CE, self-distillation, ponder.

Papers (spec `encoder_exits.md`): PABEE's depth-weighted average (§4),
DeeBERT/BERxiT's plain sums (§5, §6), Dynamic Perceiver's self-distillation
from the last exit (§9.2), PonderNet/PALBERT's task + β·KL loss (§2, §3.2).

Axes: per-layer logits `[*b, L, C]`, per-layer losses `[*b, L]` (exit axis
L right after the batch axes), labels `[*b]`, per-exit weights `[L]`.
Everything is float32 (inputs are cast) and every loss returns a scalar
averaged over all batch axes.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Real

from jaxexit import checks
from jaxexit.exits.halting import ponder_kl, ponder_task_loss
from jaxexit.typing import Array, Float, Int

ScalarLike = Real[ArrayLike, ""]


def _f32(x) -> Array:
  return jnp.asarray(x, jnp.float32)


def cross_entropy_per_exit(
  logits: Float[Array, "*b L C"], labels: Int[Array, "*b"]
) -> Float[Array, "*b L"]:
  """Cross-entropy of the true label at every exit.

  Args:
    logits: [*b, L, C] per-layer logits.
    labels: [*b] int labels in [0, C).

  Returns:
    [*b, L] float32 per-example, per-exit CE.
  """
  nb = jnp.ndim(labels)
  if jnp.ndim(logits) != nb + 2 or jnp.shape(logits)[:nb] != jnp.shape(labels):
    raise ValueError(
      f"logits must be [*b, L, C] with *b = labels.shape="
      f"{jnp.shape(labels)}; got logits.shape={jnp.shape(logits)}"
    )
  num_classes = jnp.shape(logits)[-1]
  checks.finite("logits", logits)
  checks.in_range("labels", labels, 0.0, float(num_classes - 1))
  logp = jax.nn.log_softmax(_f32(logits), axis=-1)  # [*b, L, C]
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)  # [*b, C]
  return -jnp.sum(logp * onehot[..., None, :], axis=-1)


def weighted_exit_loss(
  per_layer_loss: Float[Array, "*b L"], weights: Float[Array, "L"]
) -> Float[Array, ""]:
  """Σ_l w_l · mean_b ℓ_{b,l}.

  Args:
    per_layer_loss: [*b, L] per-example, per-exit loss.
    weights: [L] exit weights (`pabee_weights`, `uniform_weights`, …).

  Returns:
    scalar float32 loss.
  """
  checks.rank_at_least("per_layer_loss", per_layer_loss, 1, "*b, L")
  num_layers = per_layer_loss.shape[-1]
  if jnp.shape(weights) != (num_layers,):
    raise ValueError(
      f"weights must be [L] with L={num_layers}; got "
      f"weights.shape={jnp.shape(weights)}"
    )
  mean_l = jnp.mean(_f32(per_layer_loss).reshape(-1, num_layers), axis=0)
  return jnp.sum(_f32(weights) * mean_l)


def pabee_weights(num_layers: int) -> Float[Array, "L"]:
  """PABEE's depth weights w_i = i / Σ_j j, i = 1..L (§4).

  Args:
    num_layers: L ≥ 1.

  Returns:
    [L] float32 weights summing to 1.
  """
  checks.positive_int("num_layers", num_layers)
  i = jnp.arange(1, num_layers + 1, dtype=jnp.float32)
  return i / jnp.sum(i)


def uniform_weights(num_layers: int) -> Float[Array, "L"]:
  """Equal weights 1/L (the mean over exits; DeeBERT's sum is L× this).

  Args:
    num_layers: L ≥ 1.

  Returns:
    [L] float32 weights summing to 1.
  """
  checks.positive_int("num_layers", num_layers)
  return jnp.full((num_layers,), 1.0 / num_layers, jnp.float32)


def kl_self_distillation(
  student_logits: Float[Array, "*b L C"],
  teacher_logits: Float[Array, "*b C"],
  temperature: ScalarLike = 1.0,
) -> Float[Array, ""]:
  """T² Σ_l mean_b KL(softmax(t/T) ‖ softmax(s_l/T)), teacher frozen.

  Dynamic Perceiver §9.2 (official `engine.py`: `F.kl_div(log_softmax(y_e/T),
  softmax(y_merge.detach()/T), reduction='batchmean') * T**2`, summed over
  the student exits). The teacher is stop-gradient'ed.

  Args:
    student_logits: [*b, L, C] logits of the L student exits.
    teacher_logits: [*b, C] teacher (last-exit) logits.
    temperature: T > 0.

  Returns:
    scalar float32 loss.
  """
  checks.in_range(
    "temperature", temperature, 0.0, np.inf, low_open=True, high_open=True
  )
  s, t = jnp.shape(student_logits), jnp.shape(teacher_logits)
  if len(s) != len(t) + 1 or s[:-2] != t[:-1] or s[-1] != t[-1]:
    raise ValueError(
      "student_logits must be [*b, L, C] and teacher_logits [*b, C]; got "
      f"student_logits.shape={s}, teacher_logits.shape={t}"
    )
  checks.finite("student_logits", student_logits)
  checks.finite("teacher_logits", teacher_logits)
  temp = _f32(temperature)
  log_t = jax.nn.log_softmax(
    jax.lax.stop_gradient(_f32(teacher_logits)) / temp, axis=-1
  )
  log_s = jax.nn.log_softmax(_f32(student_logits) / temp, axis=-1)
  log_t = log_t[..., None, :]  # [*b, 1, C]
  kl = jnp.sum(jnp.exp(log_t) * (log_t - log_s), axis=-1)  # [*b, L]
  per_exit = jnp.mean(kl.reshape(-1, s[-2]), axis=0)  # [L]
  return temp**2 * jnp.sum(per_exit)


def ponder_loss(
  per_layer_loss: Float[Array, "*b L"],
  p: Float[Array, "*b L"],
  prior: Float[Array, "L"],
  beta: ScalarLike,
  direction: str = "prior_p",
) -> Float[Array, ""]:
  """PonderNet/PALBERT loss: Σ_n mean_b p_n ℓ_n + β · mean_b KL.

  PonderNet §2 (L = L_Rec + β L_Reg); PALBERT §3.2 (β = 0.5, λ_p = 0.1,
  KL(prior ‖ p) = the default `direction="prior_p"`, computed on the
  ε-floored p, see `halting.epsilon_floor`).

  Args:
    per_layer_loss: [*b, L] per-example, per-exit task loss.
    p: [*b, L] halting distribution.
    prior: [L] prior (`halting.truncated_geometric_prior`).
    beta: β ≥ 0.
    direction: "prior_p" (PALBERT/labml) or "p_prior" (paper's formula).

  Returns:
    scalar float32 loss.
  """
  checks.in_range("beta", beta, 0.0, np.inf, high_open=True)
  task = ponder_task_loss(per_layer_loss, p)
  return task + _f32(beta) * jnp.mean(ponder_kl(p, prior, direction=direction))
