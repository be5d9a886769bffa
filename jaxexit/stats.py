# Over 400 lines: every interval and verdict word comes from this one module
# (80 lines are the scipy-free Student-t quantile).
"""Confidence intervals and verdict words for experiment results.

Every experiment states its numbers with an interval and derives its verdict
word ("reproduced", "contradicted", "inconclusive") from that interval, never
from a point estimate. Which interval to use depends on what varies:

* **Seeds** (a few independent training runs): `t_interval`, the Student-t
  interval mean ± t_{n-1} · sd / √n over the per-seed values. It assumes the
  per-seed values are roughly normal; with n < 2 there is no interval.
  Two methods trained with the same seeds: `paired_t_interval` of the
  per-seed differences.
* **Examples** (one model, many test examples): `bootstrap_interval`, the
  percentile bootstrap over examples, for any statistic of per-example values
  (accuracy, mean loss, average depth). Two models scored on the same
  examples: `paired_bootstrap_difference`, which resamples the examples
  jointly. This interval covers the test-set sampling only, not the training
  seed.
* **Rates** (k successes out of n trials, where only the counts are known):
  `wilson_interval`, the Wilson score interval. It stays inside [0, 1] and
  behaves at 0/n and n/n, where the normal (Wald) interval collapses.
* **Accuracy–cost curves** (a sweep of thresholds per seed):
  `matched_cost_difference` compares two methods' Pareto fronts on a common
  grid of costs that both reach, then takes the paired t interval over seeds.

`verdict` turns a CI on (method − baseline) into a word: "reproduced" when
the CI excludes 0 in the paper's direction, "contradicted" when it excludes
the paper's effect size from below, else "inconclusive".

Host-side numpy in float64 (no scipy): the Student-t quantile inverts a
continued-fraction incomplete beta function by bisection; the normal
quantile is `statistics.NormalDist`.

Axes: `N` examples (or seeds), `G` cost-grid points.
"""

import dataclasses
import math
import numbers
import statistics
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from jaxexit import checks

VERDICTS = ("reproduced", "contradicted", "inconclusive")
KINDS = (
  "t",
  "bootstrap",
  "wilson",
  "paired_t",
  "paired_bootstrap",
  "no_overlap",
)


@runtime_checkable
class _SupportsArray(Protocol):
  def __array__(self, *args, **kwargs): ...


# Lists, tuples, numpy and jax arrays.
Values = Sequence | _SupportsArray
# Python and numpy ints and floats.
Real = numbers.Real


@dataclasses.dataclass(frozen=True)
class Interval:
  """A point estimate with a two-sided confidence interval.

  Attributes:
    mean: point estimate (for differences: the mean difference).
    lo: lower bound, NaN when undefined (n < 2, or no matched cost).
    hi: upper bound, NaN when undefined.
    n: number of values behind it (seeds, examples or trials).
    kind: one of `KINDS`, how the interval was made.
    confidence: two-sided coverage, in (0, 1).
  """

  mean: float
  lo: float
  hi: float
  n: int
  kind: str
  confidence: Real = 0.95

  @property
  def defined(self) -> bool:
    """Whether both bounds are numbers."""
    return not (math.isnan(self.lo) or math.isnan(self.hi))

  def as_list(self) -> list[float | None]:
    """[lo, hi] rounded to 6 decimals, None for NaN (valid JSON)."""
    return [_json_float(self.lo), _json_float(self.hi)]

  def excludes(self, value: Real) -> bool:
    """Whether `value` lies outside [lo, hi]; False when undefined."""
    return bool(self.defined and (value < self.lo or value > self.hi))

  def format(self, scale: Real = 1.0, digits: int = 1) -> str:
    """E.g. "82.3 [81.0, 83.6]", or "82.3 (n=1)" when there is no interval.

    Args:
      scale: multiplies every number (100 turns a fraction into percent).
      digits: decimals shown.

    Returns:
      The text.
    """
    if self.kind == "no_overlap":
      return f"no matched cost (n={self.n})"
    mean = f"{self.mean * scale:.{digits}f}"
    if not self.defined:
      return f"{mean} (n={self.n})"
    lo, hi = self.lo * scale, self.hi * scale
    return f"{mean} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _json_float(x: float) -> float | None:
  return None if math.isnan(x) else round(float(x), 6)


# --- Student-t quantiles without scipy -------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
  """Continued fraction of I_x(a, b), modified Lentz (Numerical Recipes 6.4)."""
  tiny = 1e-300
  qab, qap, qam = a + b, a + 1.0, a - 1.0
  c, d = 1.0, 1.0 - qab * x / qap
  d = 1.0 / (d if abs(d) > tiny else tiny)
  h = d
  for m in range(1, 1000):
    m2 = 2 * m
    for num in (
      m * (b - m) * x / ((qam + m2) * (a + m2)),
      -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
    ):
      d = 1.0 + num * d
      d = 1.0 / (d if abs(d) > tiny else tiny)
      c = 1.0 + num / c
      c = c if abs(c) > tiny else tiny
      h *= d * c
    if abs(d * c - 1.0) < 1e-16:
      break
  return h


def _betainc(a: float, b: float, x: float, y: float) -> float:
  """Regularised incomplete beta I_x(a, b), given x and y = 1 − x.

  Taking y separately keeps full precision when x is close to 1.
  """
  if x <= 0.0:
    return 0.0
  if y <= 0.0:
    return 1.0
  log_front = (
    a * math.log(x)
    + b * math.log(y)
    + math.lgamma(a + b)
    - math.lgamma(a)
    - math.lgamma(b)
  )
  # The continued fraction converges fast for x < (a + 1) / (a + b + 2); use
  # the symmetry I_x(a, b) = 1 − I_y(b, a) on the other side.
  if x < (a + 1.0) / (a + b + 2.0):
    return math.exp(log_front) * _betacf(a, b, x) / a
  return 1.0 - math.exp(log_front) * _betacf(b, a, y) / b


def _t_upper_tail(t: float, df: Real) -> float:
  """P(T > t) for t ≥ 0: ½ I_{df/(df+t²)}(df/2, ½)."""
  denom = df + t * t
  return 0.5 * _betainc(0.5 * df, 0.5, df / denom, t * t / denom)


def t_quantile(p: Real, df: Real) -> float:
  """Inverse CDF of Student's t with `df` degrees of freedom.

  Bisection on the upper tail (not on the CDF, so that p close to 1 loses
  no precision to 1 − p), to a relative width of 1e-13.

  Args:
    p: probability in (0, 1).
    df: degrees of freedom > 0 (need not be an integer).

  Returns:
    t such that P(T ≤ t) = p.
  """
  checks.in_range("p", p, 0.0, 1.0, low_open=True, high_open=True)
  checks.in_range("df", df, 0.0, math.inf, low_open=True, high_open=True)
  if p < 0.5:
    return -t_quantile(1.0 - p, df)
  tail = 1.0 - p
  if tail == 0.5:
    return 0.0
  lo, hi = 0.0, 1.0
  while _t_upper_tail(hi, df) > tail:
    lo, hi = hi, 2.0 * hi
  while hi - lo > 1e-13 * hi:
    mid = 0.5 * (lo + hi)
    if _t_upper_tail(mid, df) > tail:
      lo = mid
    else:
      hi = mid
  return 0.5 * (lo + hi)


# --- intervals --------------------------------------------------------------


def _vector(name: str, values: Values) -> np.ndarray:
  arr = np.asarray(values, dtype=np.float64)
  if arr.ndim != 1 or arr.size == 0:
    raise ValueError(
      f"{name} must be a non-empty [N] vector; got shape "
      f"{arr.shape}, {name}={values!r}"
    )
  checks.finite(name, arr)
  return arr


def _check_confidence(confidence: Real) -> None:
  checks.in_range(
    "confidence", confidence, 0.0, 1.0, low_open=True, high_open=True
  )


def t_interval(values: Values, confidence: Real = 0.95) -> Interval:
  """Student-t interval of the mean: mean ± t_{n−1} · sd(ddof=1) / √n.

  Use it for per-seed values (one number per independent training run).

  Args:
    values: [N] values, N ≥ 1.
    confidence: two-sided coverage in (0, 1).

  Returns:
    Interval of kind "t"; lo = hi = NaN when N < 2.
  """
  _check_confidence(confidence)
  x = _vector("values", values)
  return _t_interval(x, confidence, "t")


def _t_interval(x: np.ndarray, confidence: Real, kind: str) -> Interval:
  n, mean = x.size, float(x.mean())
  if n < 2:
    return Interval(mean, math.nan, math.nan, n, kind, confidence)
  q = t_quantile(0.5 + 0.5 * confidence, n - 1)
  half = q * float(x.std(ddof=1)) / math.sqrt(n)
  return Interval(mean, mean - half, mean + half, n, kind, confidence)


def paired_t_interval(
  a: Values, b: Values, confidence: Real = 0.95
) -> Interval:
  """t interval of mean(a − b) over paired values (e.g. the same seeds).

  Args:
    a: [N] values of the method, one per seed.
    b: [N] values of the baseline, paired with `a` by index.
    confidence: two-sided coverage in (0, 1).

  Returns:
    Interval of kind "paired_t" on the mean difference.
  """
  _check_confidence(confidence)
  x, y = _vector("a", a), _vector("b", b)
  _check_paired(x, y)
  return _t_interval(x - y, confidence, "paired_t")


def _check_paired(a: np.ndarray, b: np.ndarray) -> None:
  if a.shape[0] != b.shape[0]:
    raise ValueError(
      "a and b must be paired (same length along the first "
      f"axis); got len(a)={a.shape[0]}, len(b)={b.shape[0]}"
    )


def _examples(name: str, values: Values) -> np.ndarray:
  arr = np.asarray(values, dtype=np.float64)
  if arr.ndim == 0 or arr.shape[0] == 0:
    raise ValueError(
      f"{name} must have a non-empty first (example) axis; "
      f"got shape {arr.shape}"
    )
  checks.finite(name, arr)
  return arr


def _bootstrap(
  point: float,
  draws: Callable[[np.ndarray], float],
  n: int,
  *,
  num_resamples: int,
  confidence: Real,
  seed: int,
  kind: str,
) -> Interval:
  """Percentile interval of `draws(indices)` over resampled [N] indices."""
  checks.positive_int("num_resamples", num_resamples)
  _check_confidence(confidence)
  if n < 2:
    return Interval(point, math.nan, math.nan, n, kind, confidence)
  rng = np.random.default_rng(seed)
  # One resample at a time keeps memory at O(N) for large test sets.
  stats = np.array(
    [draws(rng.integers(0, n, size=n)) for _ in range(num_resamples)]
  )
  alpha = 1.0 - confidence
  lo, hi = np.quantile(stats, [0.5 * alpha, 1.0 - 0.5 * alpha])
  return Interval(point, float(lo), float(hi), n, kind, confidence)


def bootstrap_interval(
  values: Values,
  statistic: Callable[[np.ndarray], Any] = np.mean,
  *,
  num_resamples: int = 2000,
  confidence: Real = 0.95,
  seed: int = 0,
) -> Interval:
  """Percentile bootstrap interval of `statistic` over examples.

  Use it for one model scored on many examples (per-example correctness,
  loss or depth). It covers test-set sampling only, not training seeds.

  Args:
    values: [N, ...] per-example values; rows are resampled with replacement.
    statistic: maps an [N, ...] array to a scalar (default: the mean).
    num_resamples: bootstrap resamples ≥ 1.
    confidence: two-sided coverage in (0, 1).
    seed: seed of the resampling (the interval is deterministic given it).

  Returns:
    Interval of kind "bootstrap"; mean is `statistic(values)`; lo = hi = NaN
    when N < 2 (a single example has no sampling spread to resample).
  """
  x = _examples("values", values)
  return _bootstrap(
    float(statistic(x)),
    lambda i: float(statistic(x[i])),
    x.shape[0],
    num_resamples=num_resamples,
    confidence=confidence,
    seed=seed,
    kind="bootstrap",
  )


def paired_bootstrap_difference(
  a: Values,
  b: Values,
  statistic: Callable[[np.ndarray], Any] = np.mean,
  *,
  num_resamples: int = 2000,
  confidence: Real = 0.95,
  seed: int = 0,
) -> Interval:
  """Bootstrap interval of statistic(a) − statistic(b) on the same examples.

  Each resample draws one set of example indices and applies it to both, so
  the per-example correlation of the two models is kept (a much narrower
  interval than two independent ones when the models agree on most
  examples).

  Args:
    a: [N, ...] per-example values of the method (e.g. 0/1 correctness).
    b: [N, ...] per-example values of the baseline on the same examples.
    statistic: maps an [N, ...] array to a scalar (default: the mean).
    num_resamples: bootstrap resamples ≥ 1.
    confidence: two-sided coverage in (0, 1).
    seed: seed of the resampling.

  Returns:
    Interval of kind "paired_bootstrap" on the difference.
  """
  x, y = _examples("a", a), _examples("b", b)
  _check_paired(x, y)
  point = float(statistic(x)) - float(statistic(y))
  return _bootstrap(
    point,
    lambda i: float(statistic(x[i])) - float(statistic(y[i])),
    x.shape[0],
    num_resamples=num_resamples,
    confidence=confidence,
    seed=seed,
    kind="paired_bootstrap",
  )


def wilson_interval(
  successes: int | np.integer, trials: int | np.integer, confidence: Real = 0.95
) -> Interval:
  """Wilson score interval of a success rate.

    centre = (p̂ + z²/2n) / (1 + z²/n)
    half   = z √(p̂(1 − p̂)/n + z²/4n²) / (1 + z²/n)

  Args:
    successes: k, 0 ≤ k ≤ trials.
    trials: n ≥ 1.
    confidence: two-sided coverage in (0, 1).

  Returns:
    Interval of kind "wilson" with mean k / n, bounds inside [0, 1].
  """
  _check_confidence(confidence)
  checks.positive_int("trials", trials)
  checks.positive_int("successes", successes, minimum=0)
  if successes > trials:
    raise ValueError(
      f"successes must be <= trials; got successes={successes}, trials={trials}"
    )
  n, p = int(trials), int(successes) / int(trials)
  z = statistics.NormalDist().inv_cdf(0.5 + 0.5 * confidence)
  denom = 1.0 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  # At k = 0 (k = n) the bound is exactly 0 (1); rounding leaves ~1e-17.
  lo = 0.0 if successes == 0 else max(0.0, centre - half)
  hi = 1.0 if successes == trials else min(1.0, centre + half)
  return Interval(p, lo, hi, n, "wilson", confidence)


# --- accuracy-cost curves -------------------------------------------------


def _curve(costs: Values, scores: Values) -> tuple[np.ndarray, np.ndarray]:
  c, s = _vector("costs", costs), _vector("scores", scores)
  if c.shape != s.shape:
    raise ValueError(
      "costs and scores must have one length; got "
      f"costs.shape={c.shape}, scores.shape={s.shape}"
    )
  return c, s


def pareto_front(
  costs: Values, scores: Values
) -> tuple[np.ndarray, np.ndarray]:
  """The non-dominated points (lower cost, higher score), sorted by cost.

  A point is kept when every cheaper-or-equal point scores strictly lower;
  of points with equal cost only the best-scoring one is kept.

  Args:
    costs: [N] cost of each operating point (e.g. average layers).
    scores: [N] score of each operating point (e.g. accuracy).

  Returns:
    (costs, scores) of the front, both [M], M ≤ N, costs increasing.
  """
  c, s = _curve(costs, scores)
  order = np.lexsort((-s, c))  # by cost, then best score first
  c, s = c[order], s[order]
  best_before = np.concatenate([[-np.inf], np.maximum.accumulate(s)[:-1]])
  keep = s > best_before
  return c[keep], s[keep]


def interpolate_on_grid(
  costs: Values, scores: Values, grid: Values
) -> np.ndarray:
  """Score of the Pareto front, linearly interpolated at the grid costs.

  Args:
    costs: [N] costs of the operating points.
    scores: [N] scores of the operating points.
    grid: [G] costs to read the front at.

  Returns:
    [G] interpolated scores, NaN outside [min, max] cost of the front.
  """
  fc, fs = pareto_front(costs, scores)
  g = np.asarray(grid, np.float64).reshape(-1)
  out = np.interp(g, fc, fs)
  return np.where((g >= fc[0]) & (g <= fc[-1]), out, np.nan)


def _fronts(name: str, curves: Sequence) -> list[tuple[np.ndarray, np.ndarray]]:
  if len(curves) == 0:
    raise ValueError(
      f"{name} must hold at least one (costs, scores) curve; "
      f"got {name}={curves!r}"
    )
  return [pareto_front(c, s) for c, s in curves]


def matched_cost_grid(
  curves_a: Sequence, curves_b: Sequence, grid_size: int = 21
) -> np.ndarray:
  """The costs every curve's Pareto front reaches, as an even grid.

  The overlap runs from the largest minimum cost to the smallest maximum
  cost over all fronts (of both methods, all seeds).

  Args:
    curves_a: sequence of (costs [N], scores [N]) per seed of the method.
    curves_b: the same for the baseline.
    grid_size: G ≥ 1 points when the overlap is an interval.

  Returns:
    [G] costs; [1] when the overlap is a single cost (a method with one
    operating point inside the other's range); [0] when there is no overlap.
  """
  checks.positive_int("grid_size", grid_size)
  fronts = _fronts("curves_a", curves_a) + _fronts("curves_b", curves_b)
  lo = max(float(c[0]) for c, _ in fronts)
  hi = min(float(c[-1]) for c, _ in fronts)
  if lo > hi:
    return np.zeros((0,))
  if lo == hi:
    return np.array([lo])
  return np.linspace(lo, hi, grid_size)


def matched_cost_difference(
  curves_a: Sequence,
  curves_b: Sequence,
  *,
  grid_size: int = 21,
  confidence: Real = 0.95,
) -> Interval:
  """CI of the mean score gap between two methods at matched cost.

  Per seed s: d_s = mean over the grid of front_a_s(c) − front_b_s(c), on
  the `matched_cost_grid`; then the paired t interval over seeds of d_s.

  Args:
    curves_a: per seed, the method's (costs [N], scores [N]) sweep.
    curves_b: per seed (paired with `curves_a` by index), the baseline's.
    grid_size: points of the common cost grid.
    confidence: two-sided coverage in (0, 1).

  Returns:
    Interval of kind "paired_t" on the gap (method − baseline), or of kind
    "no_overlap" (mean = lo = hi = NaN) when no cost is reached by all.
  """
  _check_confidence(confidence)
  if len(curves_a) != len(curves_b):
    raise ValueError(
      "curves_a and curves_b must be paired by seed; got "
      f"len(curves_a)={len(curves_a)}, "
      f"len(curves_b)={len(curves_b)}"
    )
  grid = matched_cost_grid(curves_a, curves_b, grid_size)
  n = len(curves_a)
  if grid.size == 0:
    return Interval(math.nan, math.nan, math.nan, n, "no_overlap", confidence)
  diffs = [
    np.mean(interpolate_on_grid(*ca, grid) - interpolate_on_grid(*cb, grid))
    for ca, cb in zip(curves_a, curves_b)
  ]
  return _t_interval(np.array(diffs), confidence, "paired_t")


# --- verdicts ---------------------------------------------------------------


def verdict(diff: Interval, *, paper_effect: Real, direction: int = +1) -> str:
  """The verdict word a CI on (method − baseline) supports.

  With x = direction · diff: "reproduced" when x.lo > 0 (the CI excludes 0
  on the paper's side); "contradicted" when x.hi < paper_effect (the CI lies
  below the paper's effect size) and not reproduced; else "inconclusive".
  A small but significant effect is "reproduced": the sign is the claim.

  Args:
    diff: CI on method − baseline (any kind).
    paper_effect: the paper's effect size in its own direction, ≥ 0, in the
      units of `diff`.
    direction: +1 when the paper says method > baseline, −1 when method <
      baseline (e.g. cost, error).

  Returns:
    One of `VERDICTS`, or "inconclusive (n < 2)" when the CI is undefined,
    or "inconclusive (no matched cost)" for a "no_overlap" diff.
  """
  checks.one_of("direction", direction, (1, -1))
  checks.in_range("paper_effect", paper_effect, 0.0, math.inf, high_open=True)
  if diff.kind == "no_overlap":
    return "inconclusive (no matched cost)"
  if diff.n < 2 or not diff.defined:
    return "inconclusive (n < 2)"
  lo, hi = (diff.lo, diff.hi) if direction == 1 else (-diff.hi, -diff.lo)
  if lo > 0:
    return "reproduced"
  if hi < paper_effect:
    return "contradicted"
  return "inconclusive"


def verdict_record(
  diff: Interval, *, paper_effect: Real, direction: int = +1
) -> dict:
  """`verdict` with its numbers, ready for results.json.

  Returns:
    {"verdict", "diff_mean", "diff_ci": [lo, hi], "n", "paper_effect"}, with
    None for NaN.
  """
  return {
    "verdict": verdict(diff, paper_effect=paper_effect, direction=direction),
    "diff_mean": _json_float(diff.mean),
    "diff_ci": diff.as_list(),
    "n": diff.n,
    "paper_effect": paper_effect,
  }
