"""LYNX's class-conditional split-conformal exit rule and its check.

Paper: LYNX (Akgül et al., arXiv 2512.05325; spec `llm_exits.md` §2.6). At
a cue event a probe gives p̂ = P(a forced exit now answers correctly).
Calibration events carry y = 1 when their forced exit was right. With
non-conformity s_c = 1 − p̂_c (p̂_1 = p̂, p̂_0 = 1 − p̂), Mondrian split
conformal takes per class

  q_c = the k_c-th smallest of {s_c(x_i) : y_i = c},
  k_c = ⌈(n_c + 1)(1 − δ)⌉,

the set S(x) = {c : s_c(x) ≤ q_c}, and the rule **exits iff S(x) = {1}**,
i.e. p̂ ≥ 1 − q_1 and p̂ > q_0. For a new event exchangeable with the
label-0 calibration events, P(exit | forced exit wrong) ≤ δ.

Unlike the official code, which clips k_c to n_c (returning the largest
score when n_c is too small for δ), `calibrate` sets q_c = +∞ then: class
c is always in the set, so with c = 0 the rule never exits, and it warns
once. A calibration set without events of one class is refused.

`premature_exit_rates` checks the guarantee empirically over random
calibration/test splits. `exits` is jittable (the decoding loop calls it).

Axes: n events.
"""

import math
import warnings
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Int, Real

from jaxexit import checks
from jaxexit.typing import Array, Bool


class ConformalExit(NamedTuple):
  """The calibrated rule.

  Attributes:
    q0, q1: the class quantiles (+∞ when n_c is too small for δ).
    delta: the target premature-exit rate δ.
    n0, n1: calibration events per class.
  """

  q0: float
  q1: float
  delta: float
  n0: int
  n1: int


def _check_events(p_hat, labels) -> tuple[np.ndarray, np.ndarray]:
  p = np.asarray(p_hat, np.float64)
  y = np.asarray(labels)
  if p.ndim != 1 or y.shape != p.shape:
    raise ValueError(
      f"p_hat and labels must be [n] of the same length; got shapes "
      f"{p.shape} and {y.shape}"
    )
  checks.in_range("p_hat", p, 0.0, 1.0)
  if y.size and not np.isin(y, (0, 1)).all():
    raise ValueError(f"labels must be 0 or 1; got {np.unique(y).tolist()}")
  return p, y.astype(np.int32)


def _class_quantile(scores: np.ndarray, delta: float) -> float:
  n = scores.size
  k = math.ceil((n + 1) * (1.0 - delta) - 1e-9)
  if k > n:
    return math.inf
  return float(np.sort(scores)[k - 1])


def calibrate(
  p_hat: Real[ArrayLike, "n"], labels: Int[ArrayLike, "n"], delta: float
) -> ConformalExit:
  """The Mondrian split-conformal rule at level δ.

  Args:
    p_hat: [n] probe outputs on the calibration events.
    labels: [n] 1 where the event's forced exit was correct.
    delta: δ ∈ (0, 1).

  Raises:
    ValueError: for δ outside (0, 1), p̂ outside [0, 1], labels other than
      0/1, or no calibration event of one class (naming it).
  """
  checks.in_range("delta", delta, 0.0, 1.0, low_open=True, high_open=True)
  p, y = _check_events(p_hat, labels)
  for c, meaning in ((0, "wrong"), (1, "right")):
    if not np.any(y == c):
      raise ValueError(
        f"the calibration set has no event of class {c} (forced exit "
        f"{meaning}); the class-conditional rule needs both classes"
      )
  q0 = _class_quantile(p[y == 0], delta)  # s_0 = 1 − p̂_0 = p̂
  q1 = _class_quantile(1.0 - p[y == 1], delta)  # s_1 = 1 − p̂
  n0, n1 = int(np.sum(y == 0)), int(np.sum(y == 1))
  if math.isinf(q0):
    warnings.warn(
      f"{n0} wrong-exit calibration events are too few for delta={delta} "
      f"(k = ceil((n0 + 1)(1 - delta)) > n0 needs n0 >= "
      f"{math.ceil((1 - delta) / delta)}): the rule never exits",
      stacklevel=2,
    )
  return ConformalExit(q0, q1, float(delta), n0, n1)


def exits(
  rule: ConformalExit, p_hat: Real[ArrayLike, "*b"]
) -> Bool[Array, "*b"]:
  """True where the prediction set is {1}: p̂ ≥ 1 − q_1 and p̂ > q_0."""
  p = jnp.asarray(p_hat, jnp.float32)
  return (p >= 1.0 - rule.q1) & (p > rule.q0)


def premature_exit_rates(
  p_hat: Real[ArrayLike, "n"],
  labels: Int[ArrayLike, "n"],
  delta: float,
  *,
  splits: int = 100,
  calibration_fraction: float = 0.5,
  seed: int = 0,
) -> np.ndarray:
  """P(exit | forced exit wrong) on the test half of random splits.

  Each split calibrates on a random `calibration_fraction` of the events
  and measures, on the rest, the fraction of label-0 events the rule lets
  exit. The conformal guarantee bounds the mean over splits by δ. A split
  whose calibration half lacks a class gets no rule (`calibrate` refuses),
  i.e. never exits: rate 0.

  Returns:
    [splits] float64 rates (NaN where a test half has no label-0 event).
  """
  p, y = _check_events(p_hat, labels)
  checks.positive_int("splits", splits)
  checks.in_range(
    "calibration_fraction",
    calibration_fraction,
    0.0,
    1.0,
    low_open=True,
    high_open=True,
  )
  rng = np.random.default_rng(seed)
  n_cal = int(round(calibration_fraction * len(p)))
  rates = np.full(splits, np.nan)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # a never-exiting split is a valid split
    for i in range(splits):
      order = rng.permutation(len(p))
      cal, test = order[:n_cal], order[n_cal:]
      wrong = test[y[test] == 0]
      if not wrong.size:
        continue
      if len(np.unique(y[cal])) < 2:  # refused: the rule never exits
        rates[i] = 0.0
        continue
      rule = calibrate(p[cal], y[cal], delta)
      rates[i] = float(np.mean(np.asarray(exits(rule, p[wrong]))))
  return rates
