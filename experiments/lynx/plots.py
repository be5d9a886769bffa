"""pareto.png: accuracy vs tokens over the δ sweep, the full trace marked."""

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def write_pareto(path: pathlib.Path, records: list[dict], title: str) -> None:
  """One panel per eval set: LYNX at each δ (95 % bootstrap CI on
  accuracy), the full-trace baseline as a star."""
  names = list(dict.fromkeys(r["eval"] for r in records))
  fig, axes = plt.subplots(
    1, len(names), figsize=(4.5 * len(names), 3.8), squeeze=False
  )
  for ax, name in zip(axes[0], names):
    rows = sorted(
      (r for r in records if r["eval"] == name), key=lambda r: r["delta"]
    )
    x = [r["lynx_tokens"] for r in rows]
    y = [r["lynx_acc"] * 100 for r in rows]
    lo = [
      r["lynx_acc"] * 100 - (r["lynx_acc_ci"][0] or r["lynx_acc"]) * 100
      for r in rows
    ]
    hi = [
      (r["lynx_acc_ci"][1] or r["lynx_acc"]) * 100 - r["lynx_acc"] * 100
      for r in rows
    ]
    ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, label="LYNX")
    for r, xi, yi in zip(rows, x, y):
      ax.annotate(f"δ={r['delta']:g}", (xi, yi), fontsize=7)
    base = rows[0]
    ax.plot(
      base["baseline_tokens"],
      base["baseline_acc"] * 100,
      "*",
      markersize=14,
      color="black",
      label="full trace",
    )
    ax.set_xlabel("generated tokens per problem")
    ax.set_ylabel("accuracy %")
    ax.set_title(name)
    ax.legend(fontsize=8)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
