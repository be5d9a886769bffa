"""Score vs average depth, one curve per exit method."""

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def pareto(records: list[dict], path: pathlib.Path, *, title: str) -> None:
  """Writes a PNG of score against avg_layers, one curve per method."""
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  for method in dict.fromkeys(r["method"] for r in records):
    pts = sorted((r["avg_layers"], r["score"]) for r in records
                 if r["method"] == method)
    xs, ys = zip(*pts)
    ax.plot(xs, ys, marker="o" if len(pts) > 1 else "*", label=method,
            markersize=5 if len(pts) > 1 else 12)
  ax.set_xlabel("average layers used")
  ax.set_ylabel(records[0]["metric"])
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
