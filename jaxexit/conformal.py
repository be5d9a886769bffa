"""Split conformal prediction sets for early-exit classifiers.

Paper: JEI-DNN (Regol et al., ICLR 2024; spec `encoder_exits.md` §8.5, §12
item 9). Score s = 1 − p_y; on n calibration scores
q̂ = Quantile(s; ⌈(n+1)(1−α)⌉/n, "higher"); the set is {c : p_c ≥ 1 − q̂}.
With early exits q̂ is fitted per exit from the validation examples that
exited there, falling back to every validation example's score at that exit
when fewer than 20 did.

Axes: `N` examples (`Nv` validation, `Nt` test), `L` exits (the papers' K),
`C` classes. Host-side numpy in float64, on concrete values.
"""

from typing import NamedTuple

import numpy as np
from jaxtyping import ArrayLike, Bool, Int, Real

from jaxexit import checks


class ConformalResult(NamedTuple):
  """Test-set outcome of per-exit split conformal prediction.

  Attributes:
    coverage: fraction of test examples whose label is in their set.
    mean_set_size: mean number of classes per set.
    qhat: [L] q̂ per exit.
    alpha: the target miscoverage α.
  """

  coverage: float
  mean_set_size: float
  qhat: np.ndarray
  alpha: float


def conformal_quantile(scores: Real[ArrayLike, "n"], alpha: float) -> float:
  """The split-conformal quantile q̂ of non-conformity scores.

  Args:
    scores: [n] calibration scores, n ≥ 1.
    alpha: target miscoverage α ∈ (0, 1).

  Returns:
    q̂ at level ⌈(n+1)(1−α)⌉/n with "higher" interpolation, or 1.0 (every
    class in the set, since s = 1 − p ≤ 1) when that level exceeds 1.
  """
  checks.in_range("alpha", alpha, 0.0, 1.0, low_open=True, high_open=True)
  s = np.asarray(scores, np.float64)
  if s.ndim != 1 or s.size == 0:
    raise ValueError(
      f"scores must be a non-empty [n] vector; got shape {s.shape}"
    )
  checks.finite("scores", s)
  n = s.size
  # The 1e-9 keeps (n+1)(1−α) = 19.000000000000004 from rounding up to 20.
  level = np.ceil((n + 1) * (1.0 - alpha) - 1e-9) / n
  if level > 1.0:
    return 1.0
  return float(np.quantile(s, level, method="higher"))


def _check_probs(name: str, probs, rank: int) -> np.ndarray:
  p = np.asarray(probs, np.float64)
  if p.ndim != rank:
    raise ValueError(f"{name} must have {rank} dims; got shape {p.shape}")
  checks.in_range(name, p, 0.0, 1.0)
  return p


def prediction_sets(
  probs: Real[ArrayLike, "N C"], qhat: float | Real[ArrayLike, "N"]
) -> Bool[np.ndarray, "N C"]:
  """Conformal sets {c : p_c ≥ 1 − q̂} (score s = 1 − p_y).

  Args:
    probs: [N, C] class probabilities.
    qhat: q̂, a scalar or [N] (one per example, e.g. per exit).

  Returns:
    [N, C] bool membership.
  """
  p = _check_probs("probs", probs, 2)
  q = np.asarray(qhat, np.float64)
  if q.ndim not in (0, 1) or (q.ndim == 1 and q.shape != p.shape[:1]):
    raise ValueError(
      f"qhat must be a scalar or [N]=({p.shape[0]},); got shape {q.shape}"
    )
  return p >= (1.0 - q.reshape(q.shape + (1,) * (2 - q.ndim)))


def _check_split(
  name: str, probs, exit_layer, labels
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  p = _check_probs(f"{name}_probs", probs, 3)
  n, num_exits, num_classes = p.shape
  if n == 0:
    raise ValueError(f"{name}_probs holds no examples; got shape {p.shape}")
  e = np.asarray(exit_layer)
  y = np.asarray(labels)
  if e.shape != (n,) or y.shape != (n,):
    raise ValueError(
      f"{name}_exit and {name}_labels must be [N]=({n},); got shapes "
      f"{e.shape} and {y.shape}"
    )
  _check_index(f"{name}_exit", e, num_exits)
  _check_index(f"{name}_labels", y, num_classes)
  return p, e, y


def _check_index(name: str, x: np.ndarray, upper: int) -> None:
  if not np.issubdtype(x.dtype, np.integer) or x.min() < 0 or x.max() >= upper:
    raise ValueError(f"{name} must be ints in [0, {upper}); got {x!r}")


def per_exit_conformal(
  val_probs: Real[ArrayLike, "Nv L C"],
  val_exit: Int[ArrayLike, "Nv"],
  val_labels: Int[ArrayLike, "Nv"],
  test_probs: Real[ArrayLike, "Nt L C"],
  test_exit: Int[ArrayLike, "Nt"],
  test_labels: Int[ArrayLike, "Nt"],
  *,
  alpha: float,
  min_points: int = 20,
) -> ConformalResult:
  """Split conformal with one q̂ per exit (JEI-DNN §8.5).

  q̂_k comes from the scores 1 − p_{k,y} of the validation examples that
  exited at k; when fewer than `min_points` did, from every validation
  example's score at exit k. Each test example gets the set built from its
  own exit's probabilities and q̂.

  Args:
    val_probs: [Nv, L, C] validation probabilities at every exit.
    val_exit: [Nv] int exit taken by each validation example.
    val_labels: [Nv] int labels.
    test_probs: [Nt, L, C] test probabilities at every exit.
    test_exit: [Nt] int exit taken by each test example.
    test_labels: [Nt] int labels.
    alpha: target miscoverage α ∈ (0, 1).
    min_points: fallback threshold (20 as JEI-DNN).

  Returns:
    `ConformalResult` on the test set.
  """
  checks.positive_int("min_points", min_points)
  vp, ve, vy = _check_split("val", val_probs, val_exit, val_labels)
  tp, te, ty = _check_split("test", test_probs, test_exit, test_labels)
  if vp.shape[1:] != tp.shape[1:]:
    raise ValueError(
      "val_probs and test_probs must share [L, C]; got shapes "
      f"{vp.shape} and {tp.shape}"
    )
  scores = 1.0 - np.take_along_axis(vp, vy[:, None, None], axis=2)[..., 0]
  qhat = np.empty((vp.shape[1],))
  for k in range(vp.shape[1]):
    here = ve == k
    pool = scores[here, k] if here.sum() >= min_points else scores[:, k]
    qhat[k] = conformal_quantile(pool, alpha)
  probs_at_exit = np.take_along_axis(tp, te[:, None, None], axis=1)[:, 0]
  sets = prediction_sets(probs_at_exit, qhat[te])  # [Nt, C]
  covered = np.take_along_axis(sets, ty[:, None], axis=1)[:, 0]
  return ConformalResult(
    coverage=float(covered.mean()),
    mean_set_size=float(sets.sum(axis=1).mean()),
    qhat=qhat,
    alpha=float(alpha),
  )
