"""The Markdown tables of results.md and the table printed at the end."""

import numpy as np

from experiments.palbert_glue import summary
from jaxexit import report, stats


def _pct_ci(record: dict) -> str:
  lo, hi = record["score_ci"]
  mean = 100 * record["score_mean"]
  if lo is None:
    return f"{mean:.1f} (n={max(len(record['seeds']), 1)})"
  return f"{mean:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _x(value) -> str:
  return "–" if value is None else f"{value:.2f}x"


def _verdict(record: dict, baseline: str) -> str:
  v = record["verdict_vs"].get(baseline)
  if v is None:
    return ""
  if v["diff_ci"][0] is None:
    return v["verdict"]
  lo, hi = v["diff_ci"]
  return (
    f"{v['verdict']} ({100 * v['diff_mean']:+.1f} "
    f"[{100 * lo:+.1f}, {100 * hi:+.1f}])"
  )


def _param(record: dict) -> str:
  params = record["param"]
  if not isinstance(params, list):
    return str(params)
  unique = list(dict.fromkeys(str(p) for p in params))
  return unique[0] if len(unique) == 1 else "/".join(str(p) for p in params)


def main_table(records: list[dict]) -> str:
  """One row per method: score with its CI, depth, speed, verdicts."""
  header = [
    "task",
    "method",
    "op. point (per seed)",
    "score [95% CI]",
    "paper (ALBERT-base)",
    "avg layers",
    "exit-layer std",
    "theoretical",
    "realised b32",
    "realised b1",
    "vs PABEE (matched depth)",
    "vs PonderNet (matched depth)",
    "note",
  ]
  rows = []
  for r in records:
    note = []
    if r.get("degenerate"):
      note.append("degenerate: every example exits at one layer")
    rows.append(
      [
        r["task"],
        r["method"],
        _param(r),
        _pct_ci(r),
        "–" if r.get("paper_score") is None else r["paper_score"],
        r["avg_layers_mean"] if r["method"] != "majority" else "–",
        r["avg_layers_std_over_examples"] if r["method"] != "majority" else "–",
        _x(r["theoretical_speedup"]),
        _x(r["realised_speedup"]),
        _x(r["realised_speedup_batch1"]),
        _verdict(r, "pabee"),
        _verdict(r, "pondernet"),
        "; ".join(note),
      ]
    )
  return report.markdown_table(header, rows)


def per_layer_table(records: list[dict]) -> str:
  """Dev score of each exit alone (mean over seeds) and the exit mix."""
  methods = [r for r in records if r["method"] != "majority"]
  if not methods:
    return ""
  num_layers = len(methods[0]["per_layer_scores_mean"])
  header = (
    ["task", "method"]
    + [f"exit {n + 1}" for n in range(num_layers)]
    + ["exits at layer 1..L (all seeds)", "halting spread"]
  )
  rows = []
  for r in methods:
    rows.append(
      [r["task"], r["method"]]
      + [f"{100 * s:.1f}" for s in r["per_layer_scores_mean"]]
      + [
        " ".join(str(c) for c in r["exit_histogram"]),
        "–" if r["halting_spread_mean"] is None else r["halting_spread_mean"],
      ]
    )
  return report.markdown_table(header, rows)


def sweep_table(runs: list[dict]) -> str:
  """Each sweep point on dev, mean over seeds, with its depth."""
  rows = []
  groups = {}
  for r in runs:
    if r["method"] == "majority":
      continue
    for p in r["dev_sweep"]:
      groups.setdefault((r["task"], r["method"], str(p["param"])), []).append(p)
  for (task, method, param), points in groups.items():
    score = stats.t_interval([p["score"] for p in points])
    depth = float(np.mean([p["avg_layers"] for p in points]))
    spread = float(np.mean([p["avg_layers_std_over_examples"] for p in points]))
    rows.append(
      [
        task,
        method,
        param,
        score.format(scale=100),
        f"{depth:.2f}",
        f"{spread:.2f}",
      ]
    )
  return report.markdown_table(
    [
      "task",
      "method",
      "param",
      "dev score [95% CI]",
      "avg layers",
      "exit-layer std",
    ],
    rows,
  )


def markdown(records, runs, args, cfg) -> str:
  """The whole results.md."""
  claim = [r for r in records if r["method"] in summary.CLAIM_METHODS]
  verdicts = []
  for r in claim:
    for baseline, v in r["verdict_vs"].items():
      verdicts.append(
        f"- {r['task']}: {r['method']} vs {baseline}: **{v['verdict']}** "
        f"(gap at matched depth {_verdict(r, baseline).split(' ', 1)[-1]}"
        f", paper's gap {100 * v['paper_effect']:+.1f} points)"
      )
  return (
    f"# PALBERT and baselines on GLUE dev (preset `{args.preset}`, "
    f"model `{cfg.model}`, seeds {list(cfg.seeds)}, prior `{cfg.prior}`)"
    "\n\nScores in points with a 95 % t interval over seeds (the "
    "majority row: Wilson over dev examples). Each method's operating "
    "point is chosen per seed on held-out training data (the cheapest "
    f"point within {100 * cfg.tolerance:.0f} point of the best "
    "non-degenerate one). Realised speed-ups are measured for the first "
    "seed against the full model in the same run (batch 32: `compacted`, "
    "batch 1: `early_stop`). The paper's column is ALBERT-base-v2 "
    "(12 layers, up to 25 epochs), not this setting.\n\n"
    + main_table(records)
    + "\n\n## The claim: PALBERT beats PABEE and PonderNet at comparable "
    "depth\n\nVerdicts from `jaxexit.stats.verdict` on the t interval over "
    "seeds of the per-seed dev gap, both sweeps interpolated on the depths "
    "both reach.\n\n"
    + "\n".join(verdicts)
    + "\n\n## Each exit alone (dev, mean over seeds)\n\n"
    + per_layer_table(records)
    + "\n\n## Sweeps (dev, mean over seeds)\n\n"
    + sweep_table(runs)
    + "\n"
  )


def headline(records: list[dict]) -> str:
  """A compact table for the terminal."""
  lines = [
    f"{'task':6} {'method':18} {'score [95% CI]':22} {'layers':>7} "
    f"{'std':>5} {'speed-up':>9}  verdicts"
  ]
  for r in records:
    verdicts = ", ".join(
      f"vs {b}: {v['verdict']}" for b, v in r["verdict_vs"].items()
    )
    depth = "–" if r["method"] == "majority" else f"{r['avg_layers_mean']:.2f}"
    std = (
      "–"
      if r["method"] == "majority"
      else f"{r['avg_layers_std_over_examples']:.2f}"
    )
    lines.append(
      f"{r['task']:6} {r['method']:18} {_pct_ci(r):22} "
      f"{depth:>7} {std:>5} {_x(r['theoretical_speedup']):>9}  "
      f"{verdicts}"
    )
  return "\n".join(lines)
