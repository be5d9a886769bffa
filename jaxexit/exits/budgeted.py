"""Budgeted max-softmax thresholds: the MSDNet protocol.

Papers: MSDNet's budgeted evaluation (Huang et al., ICLR 2018), used verbatim
by Dynamic Perceiver (Han et al., ICCV 2023) and by JEI-DNN's threshold
baselines (Regol et al., ICLR 2024); spec `encoder_exits.md` §7, §8.5, §9.3.

A target exit distribution q (q_k ∝ r^k) becomes one max-softmax threshold
per exit, fitted on a held-out set so that ⌊n·q_k⌋ held-out examples exit at
k; the thresholds then gate the test set. One r gives one (accuracy, FLOPs)
point; sweeping r traces the curve.

Axes: `B` examples, `L` exits (the papers' K), 0-based; the last exit is the
fallback (T_{L-1} = −∞). Fitting runs on the host in float64 numpy;
`thresholds_rule` is the incremental jnp twin of `budgeted_exit` for
`jaxexit.execution`.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float, Int, Real

from jaxexit import checks
from jaxexit.exits.confidence import max_softmax
from jaxexit.exits.rules import ExitRule, memoryless

Vector = Real[ArrayLike, "L"] | Sequence[float]

# Dynamic Perceiver's `generate_distribution`: r = (i+4)/20 for i = 0..16
# (0.2 … 1.0), then 20/(i+4) for i = 16 down to 1 (1.0 … 4.0). The official
# loop reads 33 of its 34 slots, so r = 1 appears twice and r = 5 is unused.
# The official list holds r = 1 twice ((16 + 4) / 20 and 20 / (16 + 4));
# it is kept once here, so a sweep never scores one operating point twice.
DYN_PERCEIVER_R_VALUES = tuple(
  dict.fromkeys(
    [(i + 4) / 20 for i in range(17)] + [20 / (i + 4) for i in range(16, 0, -1)]
  )
)
# Fewer exits at the CNN-only first exit and at the third exit (§7).
DYN_PERCEIVER_RESCALE = (0.85, 1.0, 0.5, 1.0)

# Bisection range for log r: e^{±60} is a one-hot exit distribution in
# float64 for any exit count.
_LOG_R_RANGE = 60.0


def _geometric_hazards(log_r: float, num_exits: int) -> np.ndarray:
  """[L] h_k = q_k / Σ_{j≥k} q_j for q ∝ r^k (h_{L-1} = 1).

  h_k = 1 / Σ_{i=0}^{L-1-k} r^i depends only on how many exits remain, so it
  is computed in log space and stays finite for any r.
  """
  log_partial = np.logaddexp.accumulate(
    log_r * np.arange(num_exits, dtype=np.float64)
  )  # log Σ_{i≤m} r^i
  return np.exp(-log_partial[::-1])


def _check_rescale(rescale, num_exits: int) -> np.ndarray:
  if rescale is None:
    return np.ones((num_exits,))
  s = np.asarray(rescale, np.float64)
  if s.shape != (num_exits,):
    raise ValueError(
      f"rescale must have one factor per exit ({num_exits}); got "
      f"rescale={rescale!r}"
    )
  checks.in_range("rescale", s[:-1], 0.0, 1.0)
  if s[-1] != 1.0:
    raise ValueError(
      "the last exit takes the remaining mass, so its rescale factor must be "
      f"1; got rescale={rescale!r}"
    )
  return s


def _distribution(log_r: float, scale: np.ndarray) -> np.ndarray:
  hazards = scale * _geometric_hazards(log_r, scale.size)
  survival = np.concatenate([[1.0], np.cumprod(1.0 - hazards[:-1])])
  return hazards * survival


def geometric_exit_distribution(
  r: float, num_exits: int, *, rescale: Sequence[float] | None = None
) -> Float[np.ndarray, "L"]:
  """The target exit distribution q_k ∝ r^k (k = 0..L-1), normalised.

  `rescale` applies Dynamic Perceiver's adjustment (§7): for k = 0..L-2 in
  order, q_k ← s_k·q_k and then the tail q_{k+1:} is scaled to sum to
  1 − Σ_{j≤k} q_j, keeping its shape. Because the tail keeps the geometric
  shape, this equals multiplying the geometric hazard h_k = q_k / Σ_{j≥k} q_j
  by s_k: q_k = s_k h_k Π_{j<k}(1 − s_j h_j), which is how it is computed.

  Args:
    r: ratio r > 0 (r < 1 favours early exits, r > 1 late ones).
    num_exits: L ≥ 1.
    rescale: [L] factors s_k ∈ [0, 1] with s_{L-1} = 1 (the last exit takes
      what remains), e.g. `DYN_PERCEIVER_RESCALE`; None for plain geometric.

  Returns:
    [L] float64 q, non-negative, summing to 1.
  """
  checks.in_range("r", r, 0.0, np.inf, low_open=True, high_open=True)
  checks.positive_int("num_exits", num_exits)
  return _distribution(float(np.log(r)), _check_rescale(rescale, num_exits))


def _confidence_2d(confidence) -> np.ndarray:
  conf = np.asarray(confidence)
  if conf.ndim != 2 or conf.shape[0] == 0 or conf.shape[1] == 0:
    raise ValueError(
      "confidence must be [B, L] with B, L ≥ 1 (examples × exits); got "
      f"shape {conf.shape}"
    )
  checks.finite("confidence", conf)
  return conf.astype(np.float64)


def fit_thresholds(
  confidence: Real[ArrayLike, "B L"], q: Vector
) -> Float[np.ndarray, "L"]:
  """MSDNet's threshold fit on a held-out set.

  For k = 0..L-2, among the examples that have not exited before k, sort the
  confidence at exit k in decreasing order and set T_k to the value of the
  n_k-th largest, n_k = ⌊B·q_k⌋. Examples with confidence ≥ T_k exit at k,
  so ties at T_k all exit (more than n_k may leave). T_k = +∞ (nobody exits)
  when n_k = 0 or when fewer than n_k examples remain, as in the official
  code, where the count is then never reached. T_{L-1} = −∞.

  Fit on the same values the test-time rule compares (the float32
  `max_softmax` of each exit's logits) so ties reproduce exactly.

  Args:
    confidence: [B, L] held-out confidence per exit (max-softmax).
    q: [L] target exit distribution (non-negative, summing to 1).

  Returns:
    [L] float64 thresholds.
  """
  conf = _confidence_2d(confidence)
  n, num_exits = conf.shape
  q = np.asarray(q, np.float64)
  if q.shape != (num_exits,):
    raise ValueError(
      f"q must have one entry per exit ({num_exits}); got q.shape={q.shape}"
    )
  checks.in_range("q", q, 0.0, 1.0)
  if not np.isclose(q.sum(), 1.0, atol=1e-6):
    raise ValueError(f"q must sum to 1; got sum {q.sum()} for q={q.tolist()}")
  thresholds = np.full((num_exits,), np.inf)
  thresholds[-1] = -np.inf
  remaining = np.ones((n,), bool)
  for k in range(num_exits - 1):
    target = int(np.floor(n * q[k]))
    pool = np.sort(conf[remaining, k])[::-1]
    if 1 <= target <= pool.size:
      thresholds[k] = pool[target - 1]
    remaining &= conf[:, k] < thresholds[k]
  return thresholds


def budgeted_exit(
  confidence: Real[ArrayLike, "B L"], thresholds: Vector
) -> Int[np.ndarray, "B"]:
  """First exit k with confidence[:, k] ≥ T_k; the last exit otherwise.

  Args:
    confidence: [B, L] confidence per exit.
    thresholds: [L] thresholds from `fit_thresholds`.

  Returns:
    [B] int32 exit index.
  """
  conf = _confidence_2d(confidence)
  t = _thresholds_1d(thresholds, conf.shape[1])
  cond = conf >= t[None, :]
  cond[:, -1] = True
  return np.argmax(cond, axis=1).astype(np.int32)


def _thresholds_1d(thresholds, num_exits: int | None = None) -> np.ndarray:
  t = np.asarray(thresholds, np.float64)
  if t.ndim != 1 or t.size == 0 or np.isnan(t).any():
    raise ValueError(
      f"thresholds must be a non-empty [L] vector without NaN; got {t!r}"
    )
  if num_exits is not None and t.size != num_exits:
    raise ValueError(
      f"thresholds must have one entry per exit ({num_exits}); got "
      f"{t.size}: {t.tolist()}"
    )
  return t


def _check_exit_costs(exit_costs) -> np.ndarray:
  c = np.asarray(exit_costs, np.float64)
  if (
    c.ndim != 1
    or c.size == 0
    or not np.all(np.isfinite(c))
    or np.any(c <= 0)
    or np.any(np.diff(c) <= 0)
  ):
    raise ValueError(
      "exit_costs must be positive, finite and strictly increasing "
      f"(cumulative cost per exit); got exit_costs={list(exit_costs)!r}"
    )
  return c


def distribution_for_budget(
  budget: float,
  exit_costs: Sequence[float],
  *,
  rescale: Sequence[float] | None = None,
) -> Float[np.ndarray, "L"]:
  """The geometric exit distribution whose expected cost is `budget`.

  Solves Σ_k q_k(r)·c_k = budget for r by bisection on log r. The expected
  cost grows with r (every hazard h_k(r) falls as r grows, so exits move
  later), from Σ-cost at r → 0 (c_0 without rescale) to c_{L-1} at r → ∞.

  Args:
    budget: target cost as a fraction of the full model, in (0, 1].
    exit_costs: [L] cumulative cost of exiting at each exit, as a fraction of
      the full model; strictly increasing (the last may exceed 1 when heads
      add overhead).
    rescale: optional Dynamic Perceiver factors, as in
      `geometric_exit_distribution`.

  Returns:
    [L] float64 q; one-hot on the last exit when the budget is at least its
    cost.
  """
  checks.in_range("budget", budget, 0.0, 1.0, low_open=True)
  c = _check_exit_costs(exit_costs)
  scale = _check_rescale(rescale, c.size)
  if budget >= c[-1]:
    return np.eye(c.size)[-1]
  lo, hi = -_LOG_R_RANGE, _LOG_R_RANGE
  cheapest = float(_distribution(lo, scale) @ c)
  if budget < cheapest - 1e-12:
    extra = (
      ""
      if rescale is None
      else f"; with rescale={list(rescale)!r} the cheapest reachable "
      f"expected cost is {cheapest:.6g}"
    )
    raise ValueError(
      f"budget={budget} cannot be met: the cheapest exit costs "
      f"exit_costs[0]={c[0]:.6g}{extra}"
    )
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    if _distribution(mid, scale) @ c < budget:
      lo = mid
    else:
      hi = mid
    if hi - lo < 1e-12:
      break
  return _distribution(0.5 * (lo + hi), scale)


def thresholds_rule(thresholds: Vector) -> ExitRule:
  """Incremental twin of `budgeted_exit`: exit when max-softmax ≥ T_layer.

  Reads `ExitHeadOutput.logits` [B, C]. The comparison is in float32, on the
  same `max_softmax` values `fit_thresholds` should be fitted on. The last
  threshold is replaced by −∞ (the execution modes force the last exit
  anyway). `layer` may be traced, so the thresholds live in a jnp array
  indexed by it; it must have one entry per layer of the stack.

  Args:
    thresholds: [L] thresholds, e.g. from `fit_thresholds`.
  """
  t = jnp.asarray(_thresholds_1d(thresholds), jnp.float32)
  t = t.at[-1].set(-jnp.inf)

  def condition(out, layer):
    if out.logits is None:
      raise ValueError(
        "thresholds_rule reads ExitHeadOutput.logits, which is None"
      )
    return max_softmax(out.logits) >= t[layer]

  return memoryless(condition)


def thresholds_input_rule() -> ExitRule:
  """`thresholds_rule` with T passed per batch as `rule_inputs` [L].

  The same decisions as `thresholds_rule(T)` (the execution modes force the
  last exit), but T is an argument of the compiled programs instead of a
  constant baked into them, so timing many operating points (every r of a
  budget curve) compiles each mode's programs once. T = +inf never exits,
  −inf always does. The state is T broadcast to [B, L] so compaction can
  gather it with the batch.
  """

  def init(batch_size, thresholds):
    t = jnp.asarray(thresholds, jnp.float32)
    if t.ndim != 1:
      raise ValueError(
        f"rule_inputs must be [L] thresholds; got shape {t.shape}"
      )
    return jnp.broadcast_to(t[None], (batch_size,) + t.shape)

  def update(state, out, layer):
    t = jax.lax.dynamic_index_in_dim(state, layer, axis=1, keepdims=False)
    return state, max_softmax(out.logits) >= t

  return ExitRule(init, update)
