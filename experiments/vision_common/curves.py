"""Accuracy-vs-FLOPs records from per-exit logits.

Shared by `experiments.jei_dnn` and `experiments.dynamic_perceiver`. Every
model runs all exits on every example (simulated exit, encoder_exits.md
§1.1); these functions decide the exits afterwards and score them:

  budget_curve        MSDNet budgeted thresholds, one record per r (§7).
  fixed_exit_records  every example at exit k, one record per exit.
  gated_records       exits decided elsewhere (JEI-DNN's gates), one record.

Each record holds `results.RESULT_FIELDS` ("realised_speedup" is None until
the experiment measures wall-clock) plus "exit_fractions" (share of test
examples leaving at each exit) and, for `budget_curve`, "q" and
"thresholds" (±inf written as JSON Infinity).

Axes: `Nv`/`Nt` validation/test examples, `L` exits (the papers' K), `C`
classes.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxexit import calibration
from jaxexit.exits import budgeted, confidence


def _probs(logits) -> np.ndarray:
  """[N, L, C] float32 softmax probabilities."""
  z = jnp.asarray(logits, jnp.float32)
  if z.ndim != 3:
    raise ValueError(f"logits must be [N, L, C]; got shape {z.shape}")
  return np.asarray(jax.nn.softmax(z, axis=-1))


def _confidence(logits) -> np.ndarray:
  """[N, L] float32 max-softmax, the values `thresholds_rule` compares."""
  return np.asarray(confidence.max_softmax(jnp.asarray(logits, jnp.float32)))


def _check_costs(exit_costs, full_flops: float, num_exits: int) -> np.ndarray:
  c = np.asarray(exit_costs, np.float64)
  if c.shape != (num_exits,) or np.any(c <= 0) or np.any(np.diff(c) < 0):
    raise ValueError(
      f"exit_costs must be [L]=({num_exits},) positive non-decreasing "
      f"cumulative FLOPs; got exit_costs={list(exit_costs)!r}"
    )
  if not full_flops > 0:
    raise ValueError(f"full_flops must be > 0; got full_flops={full_flops!r}")
  return c


def _record(
  method: str,
  key,
  probs: np.ndarray,
  labels,
  exit_layer,
  costs: np.ndarray,
  full_flops: float,
) -> dict:
  """Scores one set of exits: [Nt, L, C] probs, [Nt] labels and exits."""
  labels = np.asarray(labels)
  exit_layer = np.asarray(exit_layer)
  if labels.shape != probs.shape[:1] or exit_layer.shape != probs.shape[:1]:
    raise ValueError(
      f"labels and exits must be [Nt]=({probs.shape[0]},); got shapes "
      f"{labels.shape} and {exit_layer.shape}"
    )
  p_exit = np.take_along_axis(probs, exit_layer[:, None, None], axis=1)[:, 0]
  conf = p_exit.max(axis=1)
  correct = np.argmax(p_exit, axis=1) == labels
  avg_flops = float(costs[exit_layer].mean())
  return {
    "method": method,
    "budget_or_threshold": key,
    "accuracy": float(correct.mean()),
    "avg_flops": avg_flops,
    "flops_fraction": avg_flops / full_flops,
    "ece": calibration.expected_calibration_error(conf, correct),
    "realised_speedup": None,
    "exit_fractions": (
      np.bincount(exit_layer, minlength=costs.size) / exit_layer.size
    ).tolist(),
  }


def budget_curve(
  method: str,
  val_logits,
  val_labels,
  test_logits,
  test_labels,
  exit_costs: Sequence[float],
  full_flops: float,
  r_values: Sequence[float],
  *,
  rescale: Sequence[float] | None = None,
) -> list[dict]:
  """MSDNet budgeted protocol: thresholds fitted on VAL, applied to TEST.

  Args:
    method: name written in every record.
    val_logits: [Nv, L, C] held-out logits at every exit.
    val_labels: [Nv] int labels (unused by the fit, kept for symmetry and
      checked for shape).
    test_logits: [Nt, L, C] test logits at every exit.
    test_labels: [Nt] int labels.
    exit_costs: [L] cumulative FLOPs of exiting at each exit (absolute).
    full_flops: FLOPs of the full model, the denominator of flops_fraction.
    r_values: geometric ratios, e.g. `budgeted.DYN_PERCEIVER_R_VALUES`.
    rescale: Dynamic Perceiver's q rescale, e.g.
      `budgeted.DYN_PERCEIVER_RESCALE`.

  Returns:
    One record per r, "budget_or_threshold" = r.
  """
  val_conf = _confidence(val_logits)
  if np.shape(val_labels) != val_conf.shape[:1]:
    raise ValueError(
      f"val_labels must be [Nv]=({val_conf.shape[0]},); got "
      f"shape {np.shape(val_labels)}"
    )
  probs = _probs(test_logits)
  test_conf = _confidence(test_logits)
  if val_conf.shape[1] != test_conf.shape[1]:
    raise ValueError(
      f"val_logits and test_logits must have the same exits; got shapes "
      f"{np.shape(val_logits)} and {np.shape(test_logits)}"
    )
  costs = _check_costs(exit_costs, full_flops, probs.shape[1])
  records = []
  for r in r_values:
    q = budgeted.geometric_exit_distribution(r, probs.shape[1], rescale=rescale)
    thresholds = budgeted.fit_thresholds(val_conf, q)
    exit_layer = budgeted.budgeted_exit(test_conf, thresholds)
    rec = _record(
      method, float(r), probs, test_labels, exit_layer, costs, full_flops
    )
    rec.update(q=q.tolist(), thresholds=thresholds.tolist())
    records.append(rec)
  return records


def fixed_exit_records(
  method: str,
  test_logits,
  test_labels,
  exit_costs: Sequence[float],
  full_flops: float,
) -> list[dict]:
  """Every example leaves at exit k: one record per exit, key f"exit{k}".

  Args:
    method: name written in every record.
    test_logits: [Nt, L, C] test logits at every exit.
    test_labels: [Nt] int labels.
    exit_costs: [L] cumulative FLOPs per exit (absolute).
    full_flops: FLOPs of the full model.

  Returns:
    L records.
  """
  probs = _probs(test_logits)
  costs = _check_costs(exit_costs, full_flops, probs.shape[1])
  n = probs.shape[0]
  return [
    _record(
      method,
      f"exit{k}",
      probs,
      test_labels,
      np.full((n,), k, np.int32),
      costs,
      full_flops,
    )
    for k in range(probs.shape[1])
  ]


def gated_records(
  method: str,
  test_logits,
  test_labels,
  test_exit,
  exit_costs: Sequence[float],
  full_flops: float,
  *,
  budget_or_threshold=None,
) -> list[dict]:
  """Scores exits decided elsewhere (e.g. JEI-DNN's gates).

  Args:
    method: name written in the record.
    test_logits: [Nt, L, C] test logits at every exit.
    test_labels: [Nt] int labels.
    test_exit: [Nt] int 0-based exit of each example.
    exit_costs: [L] cumulative FLOPs per exit (absolute), gate overheads
      included.
    full_flops: FLOPs of the full model.
    budget_or_threshold: the knob that produced these exits (JEI-DNN's γ).

  Returns:
    A list holding one record (so curves concatenate with `+`).
  """
  probs = _probs(test_logits)
  costs = _check_costs(exit_costs, full_flops, probs.shape[1])
  exit_layer = np.asarray(test_exit)
  if (
    not np.issubdtype(exit_layer.dtype, np.integer)
    or exit_layer.size == 0
    or exit_layer.min() < 0
    or exit_layer.max() >= probs.shape[1]
  ):
    raise ValueError(
      f"test_exit must be ints in [0, {probs.shape[1]}); got {exit_layer!r}"
    )
  return [
    _record(
      method,
      budget_or_threshold,
      probs,
      test_labels,
      exit_layer,
      costs,
      full_flops,
    )
  ]
