"""results.json, results.md and curve.png of a headline (frozen) run.

Every accuracy and FLOPs fraction is a mean over seeds with its 95 %
Student-t interval (`vision_common.seeds`); the verdict word comes from
`jaxexit.stats.verdict_record` on `matched_cost_difference`.
"""

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.dynamic_perceiver.joint import PAPER_NOTE  # noqa: E402
from jaxexit import report, results_store  # noqa: E402


def _ci(rec: dict, field: str, scale: float = 100.0, digits: int = 1) -> str:
  lo, hi = rec.get(f"{field}_ci", [None, None])
  mean = f"{rec[field] * scale:.{digits}f}"
  if lo is None or hi is None:
    return f"{mean} (n={len(rec['seeds'])})"
  return f"{mean} [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]"


def _key(rec: dict) -> str:
  k = rec["budget_or_threshold"]
  return f"r={k:.3g}" if isinstance(k, float) else str(k)


def headline_rows(records: list[dict]) -> list[list[str]]:
  """One table row per record: accuracy and FLOPs fraction with CIs."""
  rows = []
  for r in records:
    fractions = r.get("exit_fractions")
    rows.append(
      [
        r["method"],
        _key(r),
        _ci(r, "accuracy"),
        _ci(r, "flops_fraction"),
        f"{r['avg_flops'] / 1e6:.1f}",
        " / ".join(f"{f:.2f}" for f in fractions) if fractions else "–",
      ]
    )
  return rows


def timing_rows(rows: list[dict]) -> list[list[str]]:
  return [
    [
      t["model"],
      _key(t) if t["method"] != "full" else "full",
      f"{t['full_ms_b256']:.0f}",
      f"{t['compacted_ms_b256']:.0f}",
      f"{t['flops_speedup_b256']:.2f}x",
      f"{t['realised_speedup']:.2f}x",
      f"{t['ratio']:.2f}",
      f"{t['full_ms_b1']:.1f}",
      f"{t['early_stop_ms_b1']:.1f}",
      f"{t['flops_speedup_b1']:.2f}x",
      f"{t['realised_speedup_batch1']:.2f}x",
      f"{t['ratio_batch1']:.2f}",
    ]
    for t in rows
  ]


TIMING_HEAD = (
  "model",
  "point",
  "full ms/b256",
  "compacted ms/b256",
  "FLOPs speed-up",
  "realised",
  "ratio",
  "full ms/img",
  "early_stop ms/img",
  "FLOPs speed-up b1",
  "realised b1",
  "ratio b1",
)


def curve_figure(records: list[dict], path: pathlib.Path, title: str) -> None:
  """Accuracy vs MFLOPs per method, 95 % CI error bars on both axes."""
  fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=120)
  for method in dict.fromkeys(r["method"] for r in records):
    rows = sorted(
      (r for r in records if r["method"] == method),
      key=lambda r: r["avg_flops"],
    )
    if method in ("full", "majority"):
      for r in rows:
        ax.axhline(
          r["accuracy"],
          linestyle="--" if method == "full" else ":",
          linewidth=1,
          color="gray" if method == "majority" else None,
          label=f"{method} {_key(r)} ({r['accuracy']:.3f})",
        )
      continue
    x = np.array([r["avg_flops"] for r in rows]) / 1e6
    y = np.array([r["accuracy"] for r in rows])

    def err(field, mean, scale=1.0):
      lo = [r[f"{field}_ci"][0] for r in rows]
      hi = [r[f"{field}_ci"][1] for r in rows]
      if None in lo or None in hi:
        return None
      return np.stack(
        [mean - np.array(lo) / scale, np.array(hi) / scale - mean]
      )

    ax.errorbar(
      x,
      y,
      yerr=err("accuracy", y),
      xerr=err("avg_flops", x, 1e6),
      marker="o",
      markersize=3,
      capsize=2,
      linewidth=1,
      label=method,
    )
  ax.set_xlabel("average MFLOPs per example (XLA count, backbone included)")
  ax.set_ylabel("test accuracy (mean, 95 % CI over seeds)")
  ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def write(out: pathlib.Path, records: list[dict], extra: dict, notes: str):
  """Writes results.json ({"records", **extra}), results.md, curve.png."""
  out.mkdir(parents=True, exist_ok=True)
  results_store.write_json_atomic(
    out / "results.json", {"records": records, **extra}
  )
  table = report.markdown_table(
    (
      "method",
      "budget",
      "accuracy % [95 % CI]",
      "FLOPs fraction % [95 % CI]",
      "MFLOPs",
      "exit fractions",
    ),
    headline_rows(records),
  )
  timing = report.markdown_table(TIMING_HEAD, timing_rows(extra["timing"]))
  body = (
    f"# {extra['title']}\n\n{table}\n\nSeeds {records[0]['seeds']}; "
    "FLOPs fraction: of the method's own full model; MFLOPs: absolute, "
    "XLA count per example, backbone included.\n\n"
    f"{notes.strip()}\n\n## Timing (seed {extra['timing_seed']})\n\n"
    f"{timing}\n\n{PAPER_NOTE}"
  )
  (out / "results.md").write_text(body)
  curve_figure(records, out / "curve.png", extra["title"])
