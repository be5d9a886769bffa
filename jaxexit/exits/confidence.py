"""Confidence-based exits: entropy (DeeBERT), max-softmax, patience (PABEE).

Papers: DeeBERT (Xin et al., ACL 2020; spec `encoder_exits.md` §5), the
classic max-softmax threshold (§7), PABEE (Zhou et al., NeurIPS 2020; §4),
JEI-DNN's gate input features (Regol et al., ICLR 2024; §8.2), and CALM's
softmax-margin and hidden-state confidences (`llm_exits.md` §5.1).

Axes: per-layer logits are `[*b, L, C]` (exit axis L right after the batch
axes, classes C last); single-layer logits are `[*b, C]`. Layer indices are
0-based and an example that never meets its condition exits at `L-1`. All
maths is float32 (inputs are cast).

Vectorised exits and their incremental `rules.ExitRule` twins:
`entropy_exit` ↔ `entropy_rule`, `max_softmax_exit` ↔ `max_softmax_rule`,
`patience_exit` ↔ `patience_rule`. `margin_rule` and `cosine_rule` are
incremental only (early-exit decoding uses them).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Real

from jaxexit import checks
from jaxexit.exits.rules import ExitRule, at_least, memoryless
from jaxexit.exits.select import first_exit
from jaxexit.typing import Array, Float, Int

ScalarLike = Real[ArrayLike, ""]


def _logits_f32(name: str, logits, rank: int, axes: str) -> Array:
  checks.rank_at_least(name, logits, rank, axes)
  checks.logits(name, logits)
  return jnp.asarray(logits, jnp.float32)


def _entropy_f32(z: Array) -> Array:
  # Equal to DeeBERT's log Σ e^z − Σ z e^z / Σ e^z, but written as −Σ p log p
  # with log_softmax so large logits do not cancel catastrophically. A −inf
  # (masked) logit has p = 0 and contributes 0 (not 0·(−inf) = NaN).
  logp = jax.nn.log_softmax(z, axis=-1)
  finite_logp = jnp.where(jnp.isfinite(logp), logp, 0.0)
  return -jnp.sum(jnp.exp(logp) * finite_logp, axis=-1)


def entropy(logits: Float[Array, "*b C"]) -> Float[Array, "*b"]:
  """Entropy of softmax(logits) in nats.

  DeeBERT eq. (§5): H = log Σ_k e^{z_k} − Σ_k z_k e^{z_k} / Σ_k e^{z_k}.

  Args:
    logits: [*b, C] class logits; −inf marks a masked class.

  Returns:
    [*b] float32 entropy in [0, log C].
  """
  return _entropy_f32(_logits_f32("logits", logits, 1, "*b, C"))


def max_softmax(logits: Float[Array, "*b C"]) -> Float[Array, "*b"]:
  """Top-1 softmax probability max_c softmax(z)_c (§7).

  Args:
    logits: [*b, C] class logits.

  Returns:
    [*b] float32 in [1/C, 1].
  """
  z = _logits_f32("logits", logits, 1, "*b, C")
  return jnp.exp(jnp.max(z, axis=-1) - jax.nn.logsumexp(z, axis=-1))


def margin(logits: Float[Array, "*b C"]) -> Float[Array, "*b"]:
  """Top-1 minus top-2 softmax probability (JEI-DNN feature, §8.2).

  Args:
    logits: [*b, C] class logits, C ≥ 2.

  Returns:
    [*b] float32 in [0, 1].
  """
  z = _logits_f32("logits", logits, 1, "*b, C")
  if z.shape[-1] < 2:
    raise ValueError(f"margin needs C >= 2 classes; got logits.shape={z.shape}")
  top2 = jax.lax.top_k(jax.nn.softmax(z, axis=-1), 2)[0]  # [*b, 2]
  return top2[..., 0] - top2[..., 1]


def uncertainty_features(logits: Float[Array, "*b C"]) -> Float[Array, "*b 4"]:
  """JEI-DNN gate inputs: (max p, H(p), margin, H(p²/Σp²)), no gradient.

  JEI-DNN §8.2; order and definitions as the official
  `metrics_utils.compute_detached_uncertainty_metrics` (networkslab/dynn):
  natural-log entropies; p²/Σp² = softmax(2z). Features are stop-gradient'ed
  (the official code computes them in numpy), so the gate loss cannot move
  the inference module.

  Args:
    logits: [*b, C] class logits, C ≥ 2.

  Returns:
    [*b, 4] float32 features.
  """
  z = jax.lax.stop_gradient(_logits_f32("logits", logits, 1, "*b, C"))
  feats = [max_softmax(z), _entropy_f32(z), margin(z), _entropy_f32(2.0 * z)]
  return jnp.stack(feats, axis=-1)


def _check_entropy_threshold(threshold) -> None:
  checks.in_range("threshold", threshold, 0.0, np.inf, high_open=True)


def _check_prob_threshold(threshold) -> None:
  checks.in_range("threshold", threshold, 0.0, 1.0)


def entropy_exit(
  logits: Float[Array, "*b L C"], threshold: ScalarLike
) -> Int[Array, "*b"]:
  """DeeBERT: exit at the first layer with H(softmax(z_l)) < S (§5).

  Args:
    logits: [*b, L, C] per-layer logits.
    threshold: S ≥ 0, finite (S = 0 never exits early: H ≥ 0 and the test
      is strict, like DeeBERT).

  Returns:
    [*b] int32 exit layer.
  """
  _check_entropy_threshold(threshold)
  z = _logits_f32("logits", logits, 2, "*b, L, C")
  return first_exit(_entropy_f32(z) < threshold)


def max_softmax_exit(
  logits: Float[Array, "*b L C"], threshold: ScalarLike
) -> Int[Array, "*b"]:
  """Exit at the first layer with max_c softmax(z_l)_c ≥ T (§7).

  Args:
    logits: [*b, L, C] per-layer logits.
    threshold: T ∈ [0, 1] (T = 0 always exits at layer 0).

  Returns:
    [*b] int32 exit layer.
  """
  _check_prob_threshold(threshold)
  _logits_f32("logits", logits, 2, "*b, L, C")
  return first_exit(max_softmax(logits) >= threshold)


def _check_patience(patience, regression_tol) -> None:
  checks.positive_int("patience", patience)
  if regression_tol is not None:
    checks.in_range(
      "regression_tol", regression_tol, 0.0, np.inf, high_open=True
    )


def patience_exit(
  logits: Float[Array, "..."],
  patience: int,
  *,
  regression_tol: ScalarLike | None = None,
) -> Int[Array, "..."]:
  """PABEE: exit once the prediction has been stable for `patience` layers.

  PABEE eq. (§4): c_1 = 0; c_i = c_{i−1} + 1 if argmax f_i = argmax f_{i−1}
  (regression: |f_i − f_{i−1}| < τ, strict as in the official code) else 0;
  exit at the first i with c_i = t. The earliest exit is layer index t
  (t + 1 layers used). Computed without a scan: c_i = i − (last layer ≤ i
  whose agreement test failed), the layer-0 test always failing.

  Args:
    logits: [*b, L, C] per-layer logits, or [*b, L] regression outputs when
      `regression_tol` is given.
    patience: t ≥ 1 (PABEE's patience 0 means "no early exit": use a
      `rules.never()` / full-depth run for that instead).
    regression_tol: τ ≥ 0; None means classification.

  Returns:
    [*b] int32 exit layer.
  """
  _check_patience(patience, regression_tol)
  if regression_tol is None:
    z = _logits_f32("logits", logits, 2, "*b, L, C")
    pred = jnp.argmax(z, axis=-1)  # [*b, L]
    agree = pred[..., 1:] == pred[..., :-1]
  else:
    f = _logits_f32("logits", logits, 1, "*b, L")
    agree = jnp.abs(f[..., 1:] - f[..., :-1]) < regression_tol
  agree = jnp.concatenate([jnp.zeros_like(agree[..., :1]), agree], axis=-1)
  num_layers = agree.shape[-1]
  idx = jnp.broadcast_to(jnp.arange(num_layers, dtype=jnp.int32), agree.shape)
  last_reset = jax.lax.cummax(jnp.where(agree, 0, idx), axis=agree.ndim - 1)
  counter = idx - last_reset  # [*b, L]
  return first_exit(counter == patience)


# ---------------------------------------------------------------------------
# Incremental rules.


def _head_logits(head_out) -> Array:
  """`head_out.logits` as float32, or a ValueError if the head has none."""
  if head_out.logits is None:
    raise ValueError("this rule reads ExitHeadOutput.logits, which is None")
  checks.logits("head_out.logits", head_out.logits)
  return jnp.asarray(head_out.logits, jnp.float32)


def entropy_rule(threshold: ScalarLike) -> ExitRule:
  """Incremental DeeBERT exit (twin of `entropy_exit`); reads `logits` [B, C].

  Args:
    threshold: S ≥ 0, finite.
  """
  _check_entropy_threshold(threshold)
  return memoryless(
    lambda out, layer: _entropy_f32(_head_logits(out)) < threshold
  )


def max_softmax_rule(threshold: ScalarLike) -> ExitRule:
  """Incremental max-softmax exit (twin of `max_softmax_exit`).

  Args:
    threshold: T ∈ [0, 1].
  """
  _check_prob_threshold(threshold)
  return at_least(
    lambda out: max_softmax(_head_logits(out)), threshold, reads=("logits",)
  )


def margin_rule(threshold: ScalarLike) -> ExitRule:
  """Exit where top-1 − top-2 probability ≥ T (CALM's softmax margin).

  Args:
    threshold: T ∈ [0, 1].
  """
  _check_prob_threshold(threshold)
  return at_least(
    lambda out: margin(_head_logits(out)), threshold, reads=("logits",)
  )


def hidden_cosine(out) -> Array:
  """[B] cosine of `out.extra["h_in"]` and `out.extra["h_out"]` ([B, D]).

  CALM's "state" confidence: the hidden state entering and leaving the
  layers before an exit; close to 1 when they changed little.
  """
  if not isinstance(out.extra, dict) or not {"h_in", "h_out"} <= set(out.extra):
    raise ValueError(
      "this rule reads ExitHeadOutput.extra['h_in'] and ['h_out'] (the "
      f"hidden states around the exit's layers); got extra={out.extra!r}"
    )
  a = jnp.asarray(out.extra["h_in"], jnp.float32)
  b = jnp.asarray(out.extra["h_out"], jnp.float32)
  norms = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
  return jnp.sum(a * b, axis=-1) / jnp.maximum(norms, 1e-12)


def cosine_rule(threshold: ScalarLike) -> ExitRule:
  """Exit where the hidden state's cosine across the exit's layers ≥ T.

  Reads `extra` (`hidden_cosine`), no logits: an exit that only checks it
  needs no vocabulary projection.

  Args:
    threshold: T ∈ [-1, 1].
  """
  checks.in_range("threshold", threshold, -1.0, 1.0)
  return at_least(hidden_cosine, threshold, reads=("extra",))


class PatienceState(NamedTuple):
  """State of `patience_rule`."""

  prev: Array  # [B] int32 previous argmax (float32 value for regression)
  counter: Array  # [B] int32 PABEE counter c
  has_prev: Array  # [B] bool, False before the first layer


def patience_rule(
  patience: int, *, regression_tol: ScalarLike | None = None
) -> ExitRule:
  """Incremental PABEE (twin of `patience_exit`); reads `logits`.

  `logits` is [B, C] (classification) or [B] / [B, 1] (regression, when
  `regression_tol` is given). The first layer has no previous prediction,
  so its agreement test fails and c = 0 there.

  Args:
    patience: t ≥ 1.
    regression_tol: τ ≥ 0, or None for classification.
  """
  _check_patience(patience, regression_tol)
  regression = regression_tol is not None

  def init(batch_size, rule_inputs=None):
    del rule_inputs
    prev_dtype = jnp.float32 if regression else jnp.int32
    return PatienceState(
      prev=jnp.zeros((batch_size,), prev_dtype),
      counter=jnp.zeros((batch_size,), jnp.int32),
      has_prev=jnp.zeros((batch_size,), bool),
    )

  def update(state, head_out, layer):
    del layer
    z = _head_logits(head_out)
    if regression:
      cur = z.reshape(z.shape[0])  # [B] from [B] or [B, 1]
      agree = jnp.abs(cur - state.prev) < regression_tol
    else:
      cur = jnp.argmax(z, axis=-1).astype(jnp.int32)
      agree = cur == state.prev
    agree = agree & state.has_prev
    counter = jnp.where(agree, state.counter + 1, 0)
    new = PatienceState(cur, counter, jnp.ones_like(state.has_prev))
    return new, counter == patience

  return ExitRule(init, update, reads=("logits",))
