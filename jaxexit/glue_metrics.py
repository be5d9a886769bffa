"""GLUE metrics in float64 numpy, and `glue_score` for one task.

The official GLUE metrics (Wang et al., 2019, Table 1): accuracy, binary F1
(positive class 1: MRPC "paraphrase", QQP "duplicate"), Matthews correlation
(CoLA), Pearson and Spearman correlation (STS-B). Each task's checkpoint
selection metric is the mean of `GlueTask.selection` (e.g. STS-B
(Pearson + Spearman) / 2, MRPC and QQP (accuracy + F1) / 2).

Conventions for degenerate inputs follow scikit-learn / SciPy:

* empty inputs or inputs of different lengths raise `ValueError`;
* `matthews_corrcoef` is 0.0 when a denominator is zero (constant predictions
  or constant labels);
* `f1` is 0.0 when there is no true and no predicted positive;
* `pearson` and `spearman` are NaN when either input is constant (the
  correlation is undefined); `glue_score`'s "selection" is then NaN too.

Axes: `B` examples.
"""

import numpy as np
from jaxtyping import ArrayLike, Float64, Real

from jaxexit import checks
from jaxexit.data import glue


def _pair(preds, labels, *, dtype=None) -> tuple[np.ndarray, np.ndarray]:
  p, y = np.asarray(preds, dtype=dtype), np.asarray(labels, dtype=dtype)
  if p.ndim != 1 or y.ndim != 1:
    raise ValueError(
      f"preds and labels must be 1-D [B]; got preds.shape="
      f"{p.shape}, labels.shape={y.shape}"
    )
  checks.same_shape(("preds", "labels"), p, y)
  if p.size == 0:
    raise ValueError("preds and labels are empty; a metric needs >= 1 example")
  return p, y


def _ints(name: str, x: np.ndarray) -> np.ndarray:
  if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
    return x.astype(np.int64)
  if np.all(np.isfinite(x)) and np.all(x == np.round(x)):
    return x.astype(np.int64)
  raise ValueError(f"{name} must hold class ids (integers); got {x[:5]!r}...")


def _classes(preds, labels) -> tuple[np.ndarray, np.ndarray]:
  p, y = _pair(preds, labels)
  return _ints("preds", p), _ints("labels", y)


def accuracy(
  preds: Real[ArrayLike, "B"], labels: Real[ArrayLike, "B"]
) -> float:
  """Fraction of `preds == labels`.

  Args:
    preds: [B] predicted class ids.
    labels: [B] true class ids.

  Returns:
    Accuracy in [0, 1].
  """
  p, y = _classes(preds, labels)
  return float(np.mean(p == y, dtype=np.float64))


def f1(preds: Real[ArrayLike, "B"], labels: Real[ArrayLike, "B"]) -> float:
  """Binary F1 of the positive class 1: 2 TP / (2 TP + FP + FN).

  Args:
    preds: [B] predicted ids in {0, 1}.
    labels: [B] true ids in {0, 1}.

  Returns:
    F1 in [0, 1]; 0.0 when there are no true and no predicted positives.
  """
  p, y = _classes(preds, labels)
  for name, x in (("preds", p), ("labels", y)):
    if not np.all((x == 0) | (x == 1)):
      raise ValueError(
        f"{name} of binary f1 must be 0 or 1; got {np.unique(x)}"
      )
  tp = np.sum((p == 1) & (y == 1), dtype=np.float64)
  wrong = np.sum(p != y, dtype=np.float64)  # FP + FN
  denom = 2.0 * tp + wrong
  return float(2.0 * tp / denom) if denom > 0 else 0.0


def matthews_corrcoef(
  preds: Real[ArrayLike, "B"], labels: Real[ArrayLike, "B"]
) -> float:
  """Matthews correlation coefficient (multiclass R_K of Gorodkin, 2004).

  For two classes this is (TP TN - FP FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)).

  Args:
    preds: [B] predicted class ids.
    labels: [B] true class ids.

  Returns:
    MCC in [-1, 1]; 0.0 when predictions or labels are constant.
  """
  p, y = _classes(preds, labels)
  _, inverse = np.unique(np.concatenate([p, y]), return_inverse=True)
  k = int(inverse.max()) + 1
  conf = np.zeros((k, k), np.float64)  # [true, predicted]
  np.add.at(conf, (inverse[p.size :], inverse[: p.size]), 1.0)
  t_k, p_k = conf.sum(axis=1), conf.sum(axis=0)
  n, correct = conf.sum(), np.trace(conf)
  cov_yp = correct * n - t_k @ p_k
  cov_pp = n * n - p_k @ p_k
  cov_yy = n * n - t_k @ t_k
  if cov_pp == 0.0 or cov_yy == 0.0:
    return 0.0
  return float(cov_yp / np.sqrt(cov_pp * cov_yy))


def _floats(preds, labels) -> tuple[np.ndarray, np.ndarray]:
  p, y = _pair(preds, labels, dtype=np.float64)
  checks.finite("preds", p)
  checks.finite("labels", y)
  return p, y


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
  xc, yc = x - x.mean(), y - y.mean()
  denom = np.sqrt((xc @ xc) * (yc @ yc))
  if denom == 0.0:
    return float("nan")
  # Rounding can push |r| a hair past 1 for (anti)collinear inputs.
  return float(np.clip((xc @ yc) / denom, -1.0, 1.0))


def pearson(preds: Real[ArrayLike, "B"], labels: Real[ArrayLike, "B"]) -> float:
  """Pearson correlation of `preds` and `labels`.

  Args:
    preds: [B] predicted scores.
    labels: [B] true scores.

  Returns:
    r in [-1, 1]; NaN when either input is constant (undefined).
  """
  return _pearson(*_floats(preds, labels))


def rank_average(x: Real[ArrayLike, "B"]) -> Float64[np.ndarray, "B"]:
  """1-based ranks of `x`, ties getting the mean of their ranks.

  Args:
    x: [B] values.

  Returns:
    [B] float64 ranks (as `scipy.stats.rankdata(x, method="average")`).
  """
  x = np.asarray(x, dtype=np.float64)
  if x.size == 0:
    return x
  order = np.argsort(x, kind="stable")
  sorted_x = x[order]
  # Start of each run of equal values in sorted order.
  new_run = np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]])
  run_id = np.cumsum(new_run) - 1
  starts = np.flatnonzero(new_run)
  ends = np.concatenate([starts[1:], [x.size]])
  mean_rank = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
  ranks = np.empty_like(x)
  ranks[order] = mean_rank[run_id]
  return ranks


def spearman(
  preds: Real[ArrayLike, "B"], labels: Real[ArrayLike, "B"]
) -> float:
  """Spearman rank correlation: Pearson of the tie-averaged ranks.

  Args:
    preds: [B] predicted scores.
    labels: [B] true scores.

  Returns:
    rho in [-1, 1]; NaN when either input is constant (undefined).
  """
  p, y = _floats(preds, labels)
  return _pearson(rank_average(p), rank_average(y))


METRICS = {
  "accuracy": accuracy,
  "f1": f1,
  "mcc": matthews_corrcoef,
  "pearson": pearson,
  "spearman": spearman,
}


def glue_score(
  task: str, preds: Real[ArrayLike, "B"], labels: Real[ArrayLike, "B"]
) -> dict[str, float]:
  """Every official metric of a GLUE task, plus its "selection" metric.

  Args:
    task: a GLUE task name (see `jaxexit.data.glue.TASKS`).
    preds: [B] predicted class ids (argmax of the logits), or scores for STS-B.
    labels: [B] true class ids, or scores for STS-B.

  Returns:
    {metric: value} for each of the task's `metrics` (e.g. MRPC: "accuracy",
    "f1"), and "selection": the mean of the task's `selection` metrics (CoLA
    MCC; STS-B (Pearson + Spearman) / 2; MRPC, QQP (accuracy + F1) / 2;
    otherwise accuracy).

  Raises:
    ValueError: unknown task, empty or mismatched inputs, or class ids out of
      the task's label range.
  """
  spec = glue.glue_task(task)
  if not spec.is_regression:
    p, y = _classes(preds, labels)
    for name, x in (("preds", p), ("labels", y)):
      if np.any((x < 0) | (x >= spec.num_labels)):
        raise ValueError(
          f"{name} of {spec.title} must be class ids in "
          f"[0, {spec.num_labels}); got {np.unique(x)}"
        )
  scores = {m: METRICS[m](preds, labels) for m in spec.metrics}
  scores["selection"] = float(np.mean([scores[m] for m in spec.selection]))
  return scores
