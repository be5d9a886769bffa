"""Vision records over several training seeds: means and t-intervals.

Each seed's run gives the same records (one per method and budget or
threshold); `aggregate_seeds` turns them into one record per key with the
mean over seeds, a 95 % Student-t interval (`jaxexit.stats.t_interval`) as
`<field>_ci = [lo, hi]`, the per-seed values as `<field>_per_seed` and the
seeds as `seeds`. `seed_curves` gives each seed's (cost, accuracy) sweep for
`jaxexit.stats.matched_cost_difference`.
"""

from collections.abc import Mapping, Sequence

import numpy as np

from jaxexit import stats

KEY = ("method", "budget_or_threshold")
CI_FIELDS = ("accuracy", "flops_fraction", "avg_flops")


def _key(rec: Mapping) -> tuple:
  return tuple(repr(rec.get(k)) for k in KEY)


def aggregate_seeds(
  runs: Mapping[int, Sequence[Mapping]],
  *,
  ci_fields: Sequence[str] = CI_FIELDS,
  mean_fields: Sequence[str] = ("ece",),
) -> list[dict]:
  """One record per (method, budget_or_threshold) over the seeds' runs.

  Args:
    runs: seed -> that seed's records (each key once per seed, every seed
      holding the same keys).
    ci_fields: fields given as mean, `<f>_ci` [lo, hi] and `<f>_per_seed`.
    mean_fields: fields given as their mean only (None values skipped).

  Returns:
    Records in the first seed's order; other fields are the first seed's,
    "exit_fractions" is the mean over seeds.

  Raises:
    ValueError: no runs, or the seeds' runs hold different keys.
  """
  if not runs:
    raise ValueError("runs is empty: need at least one seed's records")
  seeds = sorted(runs)
  by_seed = {s: {_key(r): r for r in runs[s]} for s in seeds}
  first = [_key(r) for r in runs[seeds[0]]]
  for s in seeds[1:]:
    if set(by_seed[s]) != set(first):
      diff = sorted(set(by_seed[s]) ^ set(first))
      raise ValueError(
        f"seed {s}'s records differ from seed {seeds[0]}'s in keys {diff}"
      )
  out = []
  for key in first:
    recs = [by_seed[s][key] for s in seeds]
    agg = dict(recs[0], seeds=list(seeds))
    for f in ci_fields:
      vals = np.array([r[f] for r in recs], np.float64)
      agg[f] = float(vals.mean())
      agg[f"{f}_ci"] = stats.t_interval(vals).as_list()  # None if n < 2
      agg[f"{f}_per_seed"] = vals.tolist()
    for f in mean_fields:
      vals = [r[f] for r in recs if r.get(f) is not None]
      agg[f] = float(np.mean(vals)) if vals else None
    if "exit_fractions" in recs[0]:
      agg["exit_fractions"] = np.mean(
        [r["exit_fractions"] for r in recs], axis=0
      ).tolist()
    out.append(agg)
  return out


def seed_curves(
  runs: Mapping[int, Sequence[Mapping]],
  method: str,
  *,
  keep=lambda rec: True,
  cost: str = "avg_flops",
) -> list[tuple[np.ndarray, np.ndarray]]:
  """Per seed (sorted), `(costs [N], accuracies [N])` of a method's records
  that `keep` accepts."""
  curves = []
  for s in sorted(runs):
    recs = [r for r in runs[s] if r["method"] == method and keep(r)]
    if not recs:
      raise ValueError(f"seed {s} has no records of method={method!r}")
    curves.append(
      (
        np.array([r[cost] for r in recs], np.float64),
        np.array([r["accuracy"] for r in recs], np.float64),
      )
    )
  return curves


def by_seed(records: Sequence[Mapping]) -> dict[int, list[dict]]:
  """Flat records with a "seed" field -> {seed: that seed's records}."""
  out: dict[int, list[dict]] = {}
  for rec in records:
    if "seed" not in rec:
      raise ValueError(f"record has no 'seed' field: {rec!r}")
    out.setdefault(rec["seed"], []).append(
      {k: v for k, v in rec.items() if k != "seed"}
    )
  return out


def paired_gap(
  records: Sequence[Mapping],
  method: str,
  baseline: str,
  field: str,
  *,
  knobs: Sequence | None = None,
) -> stats.Interval:
  """t interval over seeds of mean_k(method_k − baseline_k) on `field`.

  Points are paired by knob ("budget_or_threshold") and seed: each seed
  contributes the mean over knobs of its differences, so the interval is
  over independent training runs.

  Args:
    records: flat per-seed records (with "seed") of both methods.
    method: the claimed method's name.
    baseline: the baseline's name (same knobs).
    field: e.g. "accuracy" or "ece".
    knobs: the knobs to pair (default: every knob of `method`).

  Raises:
    ValueError: if a knob lacks either method for some seed.
  """
  runs = by_seed(records)
  per_seed = []
  for s in sorted(runs):
    points = {(r["method"], r["budget_or_threshold"]): r for r in runs[s]}
    use = knobs
    if use is None:
      use = [k for (m, k) in points if m == method]
    gaps = []
    for knob in use:
      a, b = points.get((method, knob)), points.get((baseline, knob))
      if a is None or b is None:
        raise ValueError(
          f"seed {s} lacks {method!r} or {baseline!r} at knob {knob!r}"
        )
      gaps.append(a[field] - b[field])
    if not gaps:
      raise ValueError(f"seed {s} has no {method!r} records")
    per_seed.append(float(np.mean(gaps)))
  return stats.t_interval(np.asarray(per_seed))
