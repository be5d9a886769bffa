"""Calibration of exit predictions: reliability bins and ECE.

Paper: JEI-DNN (Regol et al., ICLR 2024; spec `encoder_exits.md` §8.5, §12
item 9) reports the expected calibration error of the gated prediction's
max-probability with 15 equal-mass (quantile) bins; equal-width bins (Guo et
al., 2017) are offered too.

  ECE = Σ_b (n_b / N) · |acc_b − conf_b|

Axes: `N` examples, `M` bins. Host-side numpy in float64, on concrete values.
"""

from typing import NamedTuple

import numpy as np
from jaxtyping import ArrayLike, Real, Shaped

from jaxexit import checks

BINNINGS = ("equal_mass", "equal_width")


class ReliabilityBins(NamedTuple):
  """Per-bin statistics of a reliability diagram.

  Attributes:
    confidence: [M] mean confidence per bin (NaN for an empty bin).
    accuracy: [M] fraction correct per bin (NaN for an empty bin).
    count: [M] int examples per bin.
    edges: [M+1] bin boundaries in [0, 1] (for equal-mass bins, midway between
      the neighbouring bins' extreme confidences).
  """

  confidence: np.ndarray
  accuracy: np.ndarray
  count: np.ndarray
  edges: np.ndarray


def _check_inputs(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
  conf = np.asarray(confidence, np.float64)
  ok = np.asarray(correct)
  if conf.ndim != 1 or conf.shape != ok.shape or conf.size == 0:
    raise ValueError(
      "confidence and correct must be non-empty [N] vectors of one length; "
      f"got confidence.shape={conf.shape}, correct.shape={ok.shape}"
    )
  checks.in_range("confidence", conf, 0.0, 1.0)
  if not np.all((ok == 0) | (ok == 1)):
    raise ValueError(f"correct must hold 0/1 or booleans; got {ok!r}")
  return conf, ok.astype(np.float64)


def _equal_mass_groups(conf: np.ndarray, num_bins: int):
  """Bins of consecutive ranks, sizes differing by at most one."""
  order = np.argsort(conf, kind="stable")
  groups = np.array_split(order, min(num_bins, conf.size))
  inner = [0.5 * (conf[a[-1]] + conf[b[0]]) for a, b in zip(groups, groups[1:])]
  return groups, np.array([0.0, *inner, 1.0])


def _equal_width_groups(conf: np.ndarray, num_bins: int):
  """Bins [e_b, e_{b+1}), the last one closed at 1."""
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  which = np.clip(
    np.searchsorted(edges, conf, side="right") - 1, 0, num_bins - 1
  )
  order = np.argsort(which, kind="stable")
  splits = np.searchsorted(which[order], np.arange(1, num_bins))
  return np.split(order, splits), edges


def _bins(confidence, correct, num_bins: int, binning: str) -> ReliabilityBins:
  checks.positive_int("num_bins", num_bins)
  checks.one_of("binning", binning, BINNINGS)
  conf, ok = _check_inputs(confidence, correct)
  if binning == "equal_mass":
    groups, edges = _equal_mass_groups(conf, num_bins)
  else:
    groups, edges = _equal_width_groups(conf, num_bins)
  count = np.array([g.size for g in groups], np.int64)
  mean_conf = np.array([conf[g].mean() if g.size else np.nan for g in groups])
  acc = np.array([ok[g].mean() if g.size else np.nan for g in groups])
  return ReliabilityBins(mean_conf, acc, count, edges)


def reliability_bins(
  confidence: Real[ArrayLike, "N"],
  correct: Shaped[ArrayLike, "N"],
  *,
  num_bins: int = 15,
  binning: str = "equal_mass",
) -> ReliabilityBins:
  """Groups predictions by confidence and compares confidence with accuracy.

  Equal-mass bins split the examples sorted by confidence into
  M = min(num_bins, N) groups of consecutive ranks (tied confidences may fall
  in neighbouring bins). Equal-width bins are [b/M, (b+1)/M), M = num_bins.

  Args:
    confidence: [N] predicted probability of the predicted class, in [0, 1].
    correct: [N] bool or 0/1, whether the prediction was right.
    num_bins: M ≥ 1.
    binning: "equal_mass" (quantile bins, as JEI-DNN) or "equal_width".

  Returns:
    `ReliabilityBins` with [M] statistics and [M+1] edges.
  """
  return _bins(confidence, correct, num_bins, binning)


def ece_from_bins(bins: ReliabilityBins) -> float:
  """Σ_b (n_b / N) |acc_b − conf_b| over the non-empty bins."""
  used = bins.count > 0
  weights = bins.count[used] / bins.count.sum()
  return float(
    np.sum(weights * np.abs(bins.accuracy[used] - bins.confidence[used]))
  )


def expected_calibration_error(
  confidence: Real[ArrayLike, "N"],
  correct: Shaped[ArrayLike, "N"],
  *,
  num_bins: int = 15,
  binning: str = "equal_mass",
) -> float:
  """Expected calibration error (ECE).

  Args:
    confidence: [N] predicted probability of the predicted class, in [0, 1].
    correct: [N] bool or 0/1.
    num_bins: number of bins (15 as JEI-DNN).
    binning: "equal_mass" or "equal_width", see `reliability_bins`.

  Returns:
    ECE in [0, 1].
  """
  return ece_from_bins(_bins(confidence, correct, num_bins, binning))
