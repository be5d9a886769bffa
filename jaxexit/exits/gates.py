"""Learned exit gates: BERxiT learning-to-exit and JEI-DNN gates.

Papers: BERxiT (Xin et al., EACL 2021; spec `encoder_exits.md` §6) and
JEI-DNN (Regol, Chataoui, Coates, ICLR 2024; §8.3–§8.4, pitfalls §12.8).

Axes: per-layer scores/gates are `[*b, L]` (exit axis L right after the
batch axes), per-layer logits `[*b, L, C]`, labels `[*b]`. Layer indices
are 0-based; an example that never meets its condition exits at `L-1`. All
maths is float32 (inputs are cast).

Vectorised exits and their incremental `rules.ExitRule` twins:
`learned_exit` ↔ `learned_exit_rule`, `jei_exit` ↔ `jei_gate_rule`.

JEI-DNN truncation, as in the official code (networkslab/dynn,
`src/models/classifier_training_helper.py`, `LossContributionMode.WEIGHTED`):
the running sum that truncates P_l is Σ_{j<l} g_j over the *raw* gate
outputs (`sum_previous_gs = sum(G)` where G holds the sigmoided g's), and
c_l divides by Π_{j<l}(1 − c_j) over the *clipped* c's (`prob_gates`).
Summing P instead of g gives the same P in exact arithmetic: P_j = g_j until
the first l where Σ_{j≤l} g_j > 1, where P_l = 1 − Σ_{j<l} g_j = 1 − Σ_{j<l}
P_j, and 0 afterwards under either sum. Inference (`GateSelectionMode.
DETERMINISTIC`) exits at the first c_l ≥ 0.5.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Real

from jaxexit import checks
from jaxexit.exits.outputs import ExitHeadOutput
from jaxexit.exits.rules import ExitRule, at_least, memoryless
from jaxexit.exits.select import first_exit
from jaxexit.typing import Array, Float, Int

ScalarLike = Real[ArrayLike, ""]
# Survival below this is treated as 0 in c_l = P_l / survival.
_TINY = float(jnp.finfo(jnp.float32).tiny)


def _f32(x) -> Array:
  return jnp.asarray(x, jnp.float32)


def lte_targets(
  logits: Float[Array, "..."],
  labels: Real[Array, "*b"],
  *,
  regression: bool = False,
) -> Float[Array, "..."]:
  """BERxiT learning-to-exit targets (§6), stop-gradient'ed.

  Classification: t_l = 1 − 1[argmax z_l = y] (1 = wrong ⇒ keep going).
  Regression: t_l = tanh(|ŷ_l − y|).

  Args:
    logits: [*b, L, C] per-layer logits; for regression [*b, L] (or
      [*b, L, 1]) per-layer predictions.
    labels: [*b] int class labels, or float targets for regression.
    regression: selects the regression target.

  Returns:
    [*b, L] float32 targets in [0, 1].
  """
  nb = jnp.ndim(labels)
  z = _f32(logits)
  if regression and z.ndim == nb + 2 and z.shape[-1] == 1:
    z = z[..., 0]
  want = nb + 1 if regression else nb + 2
  if z.ndim != want or z.shape[:nb] != jnp.shape(labels):
    axes = "*b, L" if regression else "*b, L, C"
    raise ValueError(
      f"logits must be [{axes}] with batch shape labels.shape="
      f"{jnp.shape(labels)}; got logits.shape={jnp.shape(logits)}"
    )
  checks.finite("logits", z)
  if regression:
    target = jnp.tanh(jnp.abs(z - _f32(labels)[..., None]))
  else:
    correct = jnp.argmax(z, axis=-1) == labels[..., None]  # [*b, L]
    target = 1.0 - correct.astype(jnp.float32)
  return jax.lax.stop_gradient(target)


def _check_tau(threshold) -> None:
  checks.in_range("threshold", threshold, 0.0, 1.0)


def learned_exit(
  scores: Float[Array, "*b L"], threshold: ScalarLike
) -> Int[Array, "*b"]:
  """BERxiT: exit at the first layer whose uncertainty u_l < τ (§6).

  Args:
    scores: [*b, L] LTE outputs u_l ∈ (0, 1).
    threshold: τ ∈ [0, 1].

  Returns:
    [*b] int32 exit layer.
  """
  _check_tau(threshold)
  checks.rank_at_least("scores", scores, 1, "*b, L")
  checks.probabilities("scores", scores)
  return first_exit(_f32(scores) < threshold)


def _jei_step(
  carry: tuple[Array, Array], g: Array
) -> tuple[tuple[Array, Array], tuple[Array, Array]]:
  """One JEI-DNN gate: (Σ_{j<l} g_j, Π_{j<l}(1 − c_j)), g_l → (P_l, c_l)."""
  sum_g, survival = carry
  p = jnp.maximum(0.0, jnp.minimum(g, 1.0 - sum_g))
  ok = survival > _TINY
  # Double where: no inf/NaN in values or gradients when survival is 0 (an
  # earlier gate already exits with certainty; c_l is then irrelevant).
  c = jnp.where(ok, jnp.clip(p / jnp.where(ok, survival, 1.0), 0.0, 1.0), 0.0)
  return (sum_g + g, survival * (1.0 - c)), (p, c)


def jei_exit_probabilities(
  g: Float[Array, "*b L"],
) -> tuple[Float[Array, "*b L"], Float[Array, "*b L"]]:
  """JEI-DNN's truncated direct exit probabilities and conditional gates.

  JEI-DNN §8.3: P_l = max(0, min(g_l, 1 − Σ_{j<l} g_j)) and
  c_l = clip(P_l / Π_{j<l}(1 − c_j), 0, 1) (division guarded: c_l = 0
  where the survival is 0). The final exit's probability is the remainder
  1 − Σ_l P_l; pass the G intermediate gates (or all L, the last being
  ignored by `jei_exit`).

  Args:
    g: [*b, L] gate outputs g_l = σ(gate logit) ∈ [0, 1].

  Returns:
    (P, c): [*b, L] float32 unconditional exit probabilities and [*b, L]
    float32 conditional exit probabilities.
  """
  checks.rank_at_least("g", g, 1, "*b, L")
  checks.probabilities("g", g)
  g_lb = jnp.moveaxis(_f32(g), -1, 0)  # [L, *b]
  init = (
    jnp.zeros(g_lb.shape[1:], jnp.float32),
    jnp.ones(g_lb.shape[1:], jnp.float32),
  )
  _, (p_lb, c_lb) = jax.lax.scan(_jei_step, init, g_lb)
  return jnp.moveaxis(p_lb, 0, -1), jnp.moveaxis(c_lb, 0, -1)


def _check_jei_threshold(threshold) -> None:
  checks.in_range(
    "threshold", threshold, 0.0, 1.0, low_open=True, high_open=True
  )


def jei_exit(
  g: Float[Array, "*b L"], threshold: ScalarLike = 0.5
) -> Int[Array, "*b"]:
  """JEI-DNN inference: exit at the first l with c_l ≥ threshold (§8.3).

  Args:
    g: [*b, L] gate outputs.
    threshold: in (0, 1); the paper/code uses 0.5.

  Returns:
    [*b] int32 exit layer.
  """
  _check_jei_threshold(threshold)
  _, c = jei_exit_probabilities(g)
  return first_exit(c >= threshold)


def jei_oracle_exit(
  ce: Float[Array, "*b L"], costs: Float[Array, "L"], gamma: ScalarLike
) -> Int[Array, "*b"]:
  """JEI-DNN's oracle exit l* = argmin_l CE_l + γ·C_l (§8.4, gate phase).

  Ties go to the earliest exit (like `torch.argmin`).

  Args:
    ce: [*b, L] per-exit cross-entropy of the true label.
    costs: [L] normalised cost up to each exit (final = 1).
    gamma: γ ≥ 0, the accuracy/cost trade-off (`ce_ic_tradeoff`).

  Returns:
    [*b] int32 oracle exit.
  """
  checks.in_range("gamma", gamma, 0.0, np.inf, high_open=True)
  checks.rank_at_least("ce", ce, 1, "*b, L")
  if jnp.shape(costs) != jnp.shape(ce)[-1:]:
    raise ValueError(
      f"costs must be [L] with L={jnp.shape(ce)[-1]} (from ce.shape="
      f"{jnp.shape(ce)}); got costs.shape={jnp.shape(costs)}"
    )
  total = _f32(ce) + _f32(gamma) * jnp.broadcast_to(_f32(costs), ce.shape)
  return jnp.argmin(total, axis=-1).astype(jnp.int32)


def jei_gate_targets(
  oracle_exit: Int[Array, "*b"], num_layers: int
) -> Float[Array, "*b L"]:
  """JEI-DNN gate targets t_l = 1[l ≥ l*] (cumulative, §8.4, §12.8).

  Args:
    oracle_exit: [*b] oracle exit l* (0-based).
    num_layers: number of gates/exits L.

  Returns:
    [*b, L] float32 targets.
  """
  checks.positive_int("num_layers", num_layers)
  nb = jnp.ndim(oracle_exit)
  layers = jnp.arange(num_layers, dtype=jnp.int32).reshape(
    (1,) * nb + (num_layers,)
  )
  return (layers >= oracle_exit[..., None]).astype(jnp.float32)


# ---------------------------------------------------------------------------
# Incremental rules.


def _score(head_out: ExitHeadOutput) -> Array:
  """`head_out.score` as float32 [B] (accepts [B, 1])."""
  x = head_out.score
  if x is None:
    raise ValueError("this rule reads ExitHeadOutput.score, which is None")
  if jnp.ndim(x) == 2 and jnp.shape(x)[1] == 1:
    x = x[:, 0]
  if jnp.ndim(x) != 1:
    raise ValueError(
      f"ExitHeadOutput.score must be [B]; got shape {jnp.shape(x)}"
    )
  checks.probabilities("head_out.score", x)
  return _f32(x)


def learned_exit_rule(threshold: ScalarLike) -> ExitRule:
  """Incremental BERxiT exit (twin of `learned_exit`); reads `score` = u_l.

  Args:
    threshold: τ ∈ [0, 1].
  """
  _check_tau(threshold)
  return memoryless(
    lambda out, layer: _score(out) < threshold, reads=("score",)
  )


def score_rule(threshold: ScalarLike) -> ExitRule:
  """Exit where a learned confidence score is ≥ τ; reads `score`.

  The score is a probability that exiting is safe (CALM's meta classifier,
  DYNAMAX's consistency head: P(exit prediction = final prediction)), the
  opposite sense of BERxiT's uncertainty in `learned_exit_rule`.

  Args:
    threshold: τ ∈ [0, 1].
  """
  _check_tau(threshold)
  return at_least(_score, threshold, reads=("score",))


class JeiGateState(NamedTuple):
  """State of `jei_gate_rule`."""

  sum_g: Array  # [B] float32, Σ_{j<l} g_j
  survival: Array  # [B] float32, Π_{j<l}(1 − c_j)


def jei_gate_rule(threshold: ScalarLike = 0.5) -> ExitRule:
  """Incremental JEI-DNN gating (twin of `jei_exit`); reads `score` = g_l.

  Uses the same per-gate step as `jei_exit_probabilities`, so the two agree
  bit for bit.

  Args:
    threshold: in (0, 1); 0.5 in the paper.
  """
  _check_jei_threshold(threshold)

  def init(batch_size, rule_inputs=None):
    del rule_inputs
    return JeiGateState(
      jnp.zeros((batch_size,), jnp.float32),
      jnp.ones((batch_size,), jnp.float32),
    )

  def update(state, head_out, layer):
    del layer
    carry, (_, c) = _jei_step(tuple(state), _score(head_out))
    return JeiGateState(*carry), c >= threshold

  return ExitRule(init, update, reads=("score",))
