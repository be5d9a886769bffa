"""Per-seed results → one record per (task, method), with intervals and
verdicts from `jaxexit.stats`.

Scores are fractions in [0, 1] (accuracy, or the task's selection metric).
The claim under test (PALBERT §3.5, encoder_exits.md §10.1): PALBERT scores
higher than PABEE and PonderNet at a comparable average depth. Each seed's
two dev sweeps (average layers, score) are compared on the depths both
reach (Pareto fronts, interpolated); the per-seed gaps give a t interval
over seeds, and `stats.verdict` turns it into the verdict word.
"""

import math

import numpy as np

from jaxexit import stats

# The paper's dev numbers (ALBERT-base-v2, encoder_exits.md §10.1), points.
PAPER_DEV = {
  "sst2": {
    "full": 92.7,
    "static": 91.1,
    "pabee": 92.7,
    "pondernet": 91.3,
    "palbert": 93.1,
  },
  "rte": {
    "full": 76.5,
    "static": 74.2,
    "pabee": 76.9,
    "pondernet": 74.0,
    "palbert": 78.3,
  },
}
CLAIM_METHODS = ("palbert", "palbert_per_layer")
CLAIM_BASELINES = ("pabee", "pondernet")


def paper_effect(task: str, baseline: str) -> float:
  """PALBERT − baseline in the paper's table, as a fraction (0 if absent)."""
  table = PAPER_DEV.get(task, {})
  if "palbert" not in table or baseline not in table:
    return 0.0
  return max(0.0, (table["palbert"] - table[baseline]) / 100)


def _curve(seed_result: dict) -> tuple[list[float], list[float]]:
  points = seed_result["dev_sweep"]
  return [p["avg_layers"] for p in points], [p["score"] for p in points]


def matched_depth_gap(runs_a: list[dict], runs_b: list[dict]) -> stats.Interval:
  """t interval over seeds of the per-seed gap at matched depth.

  Seeds are paired by seed value; a seed whose two curves share no depth
  is left out (its count shows in `n`).
  """
  by_seed = {r["seed"]: r for r in runs_b}
  gaps = []
  for ra in runs_a:
    rb = by_seed.get(ra["seed"])
    if rb is None:
      continue
    gap = stats.matched_cost_difference([_curve(ra)], [_curve(rb)])
    if not math.isnan(gap.mean):
      gaps.append(gap.mean)
  if not gaps:
    return stats.Interval(
      math.nan, math.nan, math.nan, len(runs_a), "no_overlap"
    )
  return stats.t_interval(gaps)


def majority_record(task: str, metric: str, train_labels, dev_labels) -> dict:
  """The constant predictor: the training split's majority class on dev."""
  values, counts = np.unique(train_labels, return_counts=True)
  majority = values[np.argmax(counts)]
  hits = int(np.sum(np.asarray(dev_labels) == majority))
  interval = stats.wilson_interval(hits, len(dev_labels))
  return {
    "task": task,
    "method": "majority",
    "metric": metric,
    "param": int(majority),
    "seeds": [],
    "score": interval.mean,
    "score_mean": interval.mean,
    "score_ci": interval.as_list(),
    "avg_layers": 0.0,
    "avg_layers_mean": 0.0,
    "avg_layers_std_over_examples": 0.0,
    "theoretical_speedup": None,
    "realised_speedup": None,
    "realised_speedup_batch1": None,
    "verdict_vs": {},
  }


def _mean(values):
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else None


def method_record(
  task: str, metric: str, method: str, num_layers: int, runs: list[dict]
) -> dict:
  """One record over the seeds of `method` (without verdicts)."""
  score = stats.t_interval([r["score"] for r in runs])
  depth = stats.t_interval([r["avg_layers"] for r in runs])
  timed = [r for r in runs if r.get("realised_speedup") is not None]
  per_layer = np.mean([r["per_layer_scores"] for r in runs], axis=0)
  record = {
    "task": task,
    "method": method,
    "metric": metric,
    "seeds": [r["seed"] for r in runs],
    "param": [r["param"] for r in runs],
    "score": round(score.mean, 4),
    "score_mean": round(score.mean, 4),
    "score_ci": score.as_list(),
    "score_per_seed": [round(r["score"], 4) for r in runs],
    "avg_layers": round(depth.mean, 3),
    "avg_layers_mean": round(depth.mean, 3),
    "avg_layers_ci": depth.as_list(),
    "avg_layers_std_over_examples": round(
      _mean([r["avg_layers_std_over_examples"] for r in runs]), 3
    ),
    "exit_histogram": np.sum(
      [r["exit_histogram"] for r in runs], axis=0
    ).tolist(),
    "theoretical_speedup": round(num_layers / depth.mean, 3),
    "realised_speedup": _round(_mean([r["realised_speedup"] for r in timed])),
    "realised_speedup_batch1": _round(
      _mean([r["realised_speedup_batch1"] for r in timed])
    ),
    "timed_seeds": [r["seed"] for r in timed],
    "degenerate": any(r["degenerate"] for r in runs),
    "heldout_score_mean": round(_mean([r["heldout_score"] for r in runs]), 4),
    "per_layer_scores_mean": [round(float(s), 4) for s in per_layer],
    "halting_spread_mean": _round(_mean([r["halting_spread"] for r in runs])),
    "paper_score": PAPER_DEV.get(task, {}).get(method),
    "verdict_vs": {},
  }
  return record


def _round(x, digits=3):
  return None if x is None else round(x, digits)


def add_verdicts(records: list[dict], runs: dict) -> None:
  """Fills `verdict_vs` of the PALBERT records from `runs[(task, method)]`."""
  for record in records:
    if record["method"] not in CLAIM_METHODS:
      continue
    task = record["task"]
    for baseline in CLAIM_BASELINES:
      if (task, baseline) not in runs:
        continue
      gap = matched_depth_gap(
        runs[(task, record["method"])], runs[(task, baseline)]
      )
      record["verdict_vs"][baseline] = stats.verdict_record(
        gap, paper_effect=paper_effect(task, baseline)
      )
