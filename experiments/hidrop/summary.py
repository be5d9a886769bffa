"""Per-seed accuracies -> records with intervals, learnability, verdicts.

Every interval and verdict word comes from `jaxexit.stats`:

* a method's accuracy (overall, over the compared types, per question
  type): mean over seeds with the t interval over seeds (`t_interval`);
* the constant answer (the training split's majority answer per question
  type; no seed): Wilson intervals over the test examples;
* learnability of a question type: the full model's t interval over seeds
  (Wilson over that type's test examples when there is one seed) lies
  above chance, the larger of 1 / (answers of the type) and the constant
  answer's accuracy on it. Types that fail are left out of the compared
  accuracy (`accuracy_compared`), on which the verdicts are drawn;
* "within `MARGIN` of the full model" (HiDrop's claim, and the same test
  of the baselines): a non-inferiority rule on the paired t interval of
  (method − full) over seeds (`paired_t_interval`). The interval shifted
  by +MARGIN goes through `verdict_record(paper_effect=0, direction=+1)`:
  "reproduced" when the whole CI lies above −MARGIN, "contradicted" when
  it lies below −MARGIN, else "inconclusive".

Axes: N test examples, S seeds.
"""

import dataclasses

import numpy as np

from jaxexit import stats

# HiDrop's claim: accuracy within 1 point of the full model.
MARGIN = 0.01


def type_accuracy(
  right: np.ndarray, qtype: np.ndarray, type_names: tuple[str, ...]
) -> dict[str, float]:
  """{type name: accuracy} of a [N] bool correctness vector."""
  return {
    name: float(right[qtype == t].mean())
    for t, name in enumerate(type_names)
    if np.any(qtype == t)
  }


def constant_answers(
  train_answer: np.ndarray, train_qtype: np.ndarray, num_types: int
) -> np.ndarray:
  """[num_types] the most frequent training answer of each question type."""
  return np.array(
    [
      np.bincount(train_answer[train_qtype == t]).argmax()
      if np.any(train_qtype == t)
      else -1
      for t in range(num_types)
    ]
  )


def _ci(interval: stats.Interval) -> list:
  return interval.as_list()


def constant_record(
  train: dict, test: dict, type_names: tuple[str, ...]
) -> tuple[dict, np.ndarray]:
  """The majority-answer-per-type row (Wilson intervals) and its [N]
  correctness vector."""
  answers = constant_answers(train["answer"], train["qtype"], len(type_names))
  right = answers[test["qtype"]] == test["answer"]
  by_type = type_accuracy(right, test["qtype"], type_names)
  type_ci = {}
  for t, name in enumerate(type_names):
    mask = test["qtype"] == t
    if mask.any():
      type_ci[name] = _ci(stats.wilson_interval(right[mask].sum(), mask.sum()))
  return {
    "method": "constant",
    "schedule": "majority answer per type",
    "seeds": [],
    "accuracy": float(right.mean()),
    "accuracy_ci": _ci(stats.wilson_interval(right.sum(), right.size)),
    "ci_kind": "wilson over test examples",
    "type_accuracy": by_type,
    "type_accuracy_ci": type_ci,
  }, right


def chance_levels(
  answers_per_type: dict[str, int], constant: dict[str, float]
) -> dict[str, float]:
  """max(1 / answers, constant-answer accuracy) per type."""
  return {
    name: max(1.0 / n, constant.get(name, 0.0))
    for name, n in answers_per_type.items()
  }


def _seed_interval(values: list[float]) -> stats.Interval:
  return stats.t_interval(values)


def learnable_types(
  full_runs: list[dict], test: dict, chance: dict[str, float]
) -> dict[str, dict]:
  """Per type: {"learnable", "chance", "ci", "ci_kind"} of the full model.

  Args:
    full_runs: per seed, {"right": [N] bool, "type_accuracy": {...}}.
    test: the test batch (its "qtype").
    chance: `chance_levels`.
  """
  out = {}
  for t, name in enumerate(chance):
    if len(full_runs) >= 2:
      ci = _seed_interval([r["type_accuracy"][name] for r in full_runs])
      kind = "t over seeds"
    else:
      right = full_runs[0]["right"][test["qtype"] == t]
      ci = stats.wilson_interval(right.sum(), right.size)
      kind = "wilson over test examples"
    out[name] = {
      "learnable": bool(ci.defined and ci.lo > chance[name]),
      "chance": chance[name],
      "ci": _ci(ci),
      "ci_kind": kind,
    }
  return out


def compared_accuracy(right: np.ndarray, qtype: np.ndarray, types) -> float:
  """Accuracy over the examples whose type index is in `types`."""
  mask = np.isin(qtype, list(types))
  return float(right[mask].mean()) if mask.any() else float("nan")


def method_record(
  runs: list[dict], type_names: tuple[str, ...], compared: tuple[int, ...]
) -> dict:
  """Seed statistics of one method/schedule.

  Args:
    runs: per seed, {"seed", "right": [N] bool, "qtype": [N],
      "type_accuracy", "final_loss", "train_seconds"}.
    type_names: the question types, by index.
    compared: indices of the learnable types.
  """
  acc = [float(r["right"].mean()) for r in runs]
  comp = [compared_accuracy(r["right"], r["qtype"], compared) for r in runs]
  comp_ci = _ci(_seed_interval(comp)) if compared else [None, None]
  per_type = {
    name: [r["type_accuracy"][name] for r in runs]
    for name in runs[0]["type_accuracy"]
  }
  type_ci = {k: _seed_interval(v) for k, v in per_type.items()}
  return {
    "seeds": [r["seed"] for r in runs],
    "accuracy": float(np.mean(acc)),
    "accuracy_ci": _ci(_seed_interval(acc)),
    "accuracy_per_seed": acc,
    "accuracy_compared": float(np.mean(comp)) if compared else None,
    "accuracy_compared_ci": comp_ci,
    "accuracy_compared_per_seed": comp,
    "compared_types": [type_names[t] for t in compared],
    "ci_kind": "t over seeds",
    "type_accuracy": {k: float(np.mean(v)) for k, v in per_type.items()},
    "type_accuracy_ci": {k: _ci(v) for k, v in type_ci.items()},
    "type_accuracy_per_seed": per_type,
    "final_loss": [r["final_loss"] for r in runs],
    "train_seconds": [r["train_seconds"] for r in runs],
  }


def non_inferiority(method: list[float], full: list[float]) -> dict:
  """The verdict record of "method within MARGIN of full" (see module doc).

  Args:
    method, full: [S] compared accuracies, paired by seed.
  """
  diff = stats.paired_t_interval(method, full)
  shifted = dataclasses.replace(
    diff, mean=diff.mean + MARGIN, lo=diff.lo + MARGIN, hi=diff.hi + MARGIN
  )
  rec = stats.verdict_record(shifted, paper_effect=0.0, direction=+1)
  rec.update(
    claim=f"method - full >= -{MARGIN} (within {MARGIN * 100:g} point)",
    diff_mean=round(float(diff.mean), 6),
    diff_ci=diff.as_list(),
    margin=MARGIN,
    rule="non-inferiority: paired t CI over seeds of (method - full) on "
    "the compared types, shifted by +margin, through "
    "jaxexit.stats.verdict_record(paper_effect=0, direction=+1)",
  )
  return rec


def untested(method: list[float], full: list[float]) -> dict:
  """When no question type is learnable: the paired t interval of
  (method - full) over seeds on all types, descriptive only (no verdict:
  a difference between models that learned nothing tests no claim)."""
  diff = stats.paired_t_interval(method, full)
  return {
    "verdict": None,
    "diff_mean": round(float(diff.mean), 6),
    "diff_ci": diff.as_list(),
    "n": diff.n,
    "margin": MARGIN,
    "on": "all question types (descriptive)",
    "rule": "not tested: the full model learns no question type above "
    "chance (learnability in results.json)",
  }
