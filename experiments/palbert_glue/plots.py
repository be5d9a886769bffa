"""Score vs average depth, one curve per exit method."""

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def pareto(records: list[dict], path: pathlib.Path, *, title: str) -> None:
  """Writes a PNG of score against avg_layers, one curve per method."""
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  tasks = list(dict.fromkeys(r["task"] for r in records))
  for key in dict.fromkeys((r["task"], r["method"]) for r in records):
    pts = sorted((r["avg_layers"], r["score"]) for r in records
                 if (r["task"], r["method"]) == key)
    xs, ys = zip(*pts)
    label = key[1] if len(tasks) == 1 else f"{key[0]}/{key[1]}"
    ax.plot(xs, ys, marker="o" if len(pts) > 1 else "*", label=label,
            markersize=5 if len(pts) > 1 else 12)
  ax.set_xlabel("average layers used")
  ax.set_ylabel(f'dev {records[0]["metric"]}')
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
