"""Intervals, verdicts and the results table, from the per-question data.

Every number of a sweep point is a ratio of per-question sums (accuracy:
correct / questions; consistency: matched / full-model answer tokens;
FLOPs: Σ per-token fraction / decode steps; layers: Σ exit layer / steps).
Its 95 % interval is the percentile bootstrap
(`jaxexit.stats.bootstrap_interval`) over *decode batches*: the questions
of one batch share their exit decisions (CALM's batch rule), so the batch,
not the question, is the independent unit (at batch 1 it is the question).
Differences against the full model resample the same batches for both
(`paired_bootstrap_difference`).

Verdicts (`jaxexit.stats.verdict_record`; DYNAMAX publishes no numbers, so
the claim tested is its qualitative one, "exits save compute at no loss"):

* `saves_compute`: the CI of (FLOPs fraction − 1), paper_effect 0,
  direction −1: "reproduced" = fewer FLOPs than the full model,
  "contradicted" = more;
* `accuracy_vs_full`: non-inferiority, the paired CI of (accuracy − the
  full model's) shifted by +`MARGIN`, paper_effect 0, direction +1:
  "reproduced" = the whole CI lies above −`MARGIN`, "contradicted" = below;
* `mamba_vs_mlp` (the paper's comparison of exit classifiers): the paired
  CI of the Mamba classifier's consistency minus the MLP's at the same
  state mode and λ, paper_effect 0, direction +1, with the FLOPs
  difference beside it.

Axes: P questions, G decode batches.
"""

import dataclasses

import numpy as np

from jaxexit import report, stats

# Accuracy loss tolerated by "no loss" (ROUGE acc, absolute), chosen here:
# the paper gives none.
MARGIN = 0.05
SUMS = ("accuracy", "consistency", "flops", "layers")


def batch_sums(values, batch: int) -> np.ndarray:
  """[G, 2] (numerator, denominator) sums per decode batch of `batch`
  consecutive questions; [P] values count 1 each."""
  x = np.asarray(values, float)
  if x.ndim == 1:
    x = np.stack([x, np.ones_like(x)], axis=1)
  groups = np.arange(len(x)) // batch
  return np.stack([x[groups == g].sum(0) for g in range(groups[-1] + 1)])


def ratio(sums: np.ndarray) -> float:
  """Σ numerators / Σ denominators (0 when nothing was counted)."""
  den = sums[:, 1].sum()
  return float(sums[:, 0].sum() / den) if den else 0.0


def interval(values, batch: int) -> stats.Interval:
  """The ratio of per-question `values` with its batch bootstrap CI."""
  return stats.bootstrap_interval(batch_sums(values, batch), ratio)


def paired(a, b, batch: int) -> stats.Interval:
  """ratio(a) − ratio(b) on the same questions, batches resampled jointly."""
  return stats.paired_bootstrap_difference(
    batch_sums(a, batch), batch_sums(b, batch), ratio
  )


def _shift(iv: stats.Interval, by: float) -> stats.Interval:
  return dataclasses.replace(
    iv, mean=iv.mean + by, lo=iv.lo + by, hi=iv.hi + by
  )


def non_inferiority(a, b, batch: int) -> dict:
  """The verdict record of "accuracy(a) ≥ accuracy(b) − MARGIN"."""
  diff = paired(a, b, batch)
  rec = stats.verdict_record(
    _shift(diff, MARGIN), paper_effect=0.0, direction=+1
  )
  rec.update(
    diff_mean=round(diff.mean, 6),
    diff_ci=diff.as_list(),
    margin=MARGIN,
    rule="paired batch-bootstrap CI of (method - full) ROUGE acc, shifted "
    "by +margin, through jaxexit.stats.verdict_record(paper_effect=0, "
    "direction=+1)",
  )
  return rec


def _point(name: str, iv: stats.Interval) -> dict:
  return {name: round(iv.mean, 6), f"{name}_ci": iv.as_list()}


def summarise(records: list[dict]) -> list[dict]:
  """Adds estimates, intervals and verdicts to each record (in place) from
  its `per_question` data, and returns the Mamba-vs-MLP comparisons."""
  full = {r["backbone"]: r for r in records if r["classifier"] == "none"}
  for rec in records:
    pq, batch = rec["per_question"], rec["decode_batch"]
    ref = full[rec["backbone"]]["per_question"]
    rec.update(_point("accuracy", interval(pq["accuracy"], batch)))
    if rec["classifier"] == "none":
      rec.update(
        avg_layers=float(rec["num_layers"]), flops_fraction=1.0, consistency=1.0
      )
      continue
    rec["accuracy_vs_full"] = non_inferiority(
      pq["accuracy"], ref["accuracy"], batch
    )
    if rec["classifier"] == "constant":
      continue
    for name, key in (
      ("consistency", "consistency"),
      ("flops_fraction", "flops"),
      ("avg_layers", "layers"),
    ):
      rec.update(_point(name, interval(pq[key], batch)))
    flops = interval(pq["flops"], batch)
    rec["saves_compute"] = stats.verdict_record(
      _shift(flops, -1.0), paper_effect=0.0, direction=-1
    )
    rec["realised_speedup"] = rec["tokens_per_s"] / rec["full_tokens_per_s"]
    rec["theoretical_speedup"] = 1.0 / flops.mean
  return mamba_vs_mlp(records)


def mamba_vs_mlp(records: list[dict]) -> list[dict]:
  """The paired comparisons of the two trained classifiers."""
  out = []
  by_key = {
    (r["backbone"], r["classifier"], r["state_mode"], r["threshold"]): r
    for r in records
  }
  for (backbone, kind, mode, lam), rec in by_key.items():
    other = by_key.get((backbone, "mlp", mode, lam))
    if kind != "mamba" or other is None:
      continue
    batch = rec["decode_batch"]
    a, b = rec["per_question"], other["per_question"]
    diff = paired(a["consistency"], b["consistency"], batch)
    out.append(
      {
        "backbone": backbone,
        "state_mode": mode,
        "threshold": lam,
        "consistency": stats.verdict_record(
          diff, paper_effect=0.0, direction=+1
        ),
        "flops_diff": paired(a["flops"], b["flops"], batch).as_list(),
        "flops_diff_mean": round(paired(a["flops"], b["flops"], batch).mean, 6),
      }
    )
  return out


def agreement_summary(per_question: dict) -> dict:
  """Student-vs-teacher agreement (`distill.agreement`) with bootstrap CIs
  over questions (two full models: no shared decisions)."""
  out = {}
  for name, values in per_question.items():
    out.update(_point(name, interval(values, 1)))
  return out


def _ci(rec: dict, name: str, scale: float = 1.0) -> str:
  value, ci = rec.get(name), rec.get(f"{name}_ci")
  if value is None:
    return "–"
  if not ci or ci[0] is None:
    return f"{value * scale:.2f}"
  return f"{value * scale:.2f} [{ci[0] * scale:.2f}, {ci[1] * scale:.2f}]"


def _verdict(rec: dict | None, diff: bool = False) -> str:
  if rec is None:
    return "–"
  if diff:
    lo, hi = rec["diff_ci"]
    return f"{rec['diff_mean']:+.3f} [{lo:+.3f}, {hi:+.3f}] {rec['verdict']}"
  return rec["verdict"]


TABLE = (
  "classifier",
  "rule",
  "state mode",
  "λ",
  "avg layers",
  "FLOPs / full",
  "consistency",
  "ROUGE acc",
  "Δ acc vs full (≥ −0.05?)",
  "saves compute?",
  "realised",
  "theoretical",
)


def table(records: list[dict]) -> str:
  """The Markdown table of one backbone's records (after `summarise`)."""
  rows = []
  for r in records:
    lam = "–" if r["threshold"] is None else f"{r['threshold']:g}"
    speed = lambda k: f"{r[k]:.2f}x" if r.get(k) is not None else "–"
    rows.append(
      [
        r["classifier"],
        r["rule"] or "–",
        r["state_mode"],
        lam,
        _ci(r, "avg_layers"),
        _ci(r, "flops_fraction"),
        _ci(r, "consistency"),
        _ci(r, "accuracy"),
        _verdict(r.get("accuracy_vs_full"), diff=True),
        _verdict(r.get("saves_compute")),
        speed("realised_speedup"),
        speed("theoretical_speedup"),
      ]
    )
  return report.markdown_table(TABLE, rows)


def cost_table(kind_costs: dict) -> str:
  """Each classifier kind's exit pieces in blocks."""
  cols = ("lm_head", "score_head", "adapter", "passing_an_exit", "propagate")
  rows = [
    [kind] + [f"{c[k]:.4g}" for k in cols] for kind, c in kind_costs.items()
  ]
  return report.markdown_table(("kind", *cols), rows)
