"""Dev score vs average depth: every seed's sweep, the chosen points and
the majority class."""

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def pareto(
  runs: list[dict], records: list[dict], path: pathlib.Path, *, title: str
) -> None:
  """Writes a PNG: one colour per method, a thin line per seed's sweep, a
  star at each seed's chosen operating point, a dashed majority line."""
  tasks = list(dict.fromkeys(r["task"] for r in runs))
  fig, axes = plt.subplots(
    1, len(tasks), figsize=(6.5 * len(tasks), 4.5), dpi=120, squeeze=False
  )
  colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for ax, task in zip(axes[0], tasks):
    methods = list(
      dict.fromkeys(
        r["method"]
        for r in runs
        if r["task"] == task and r["method"] != "majority"
      )
    )
    for i, method in enumerate(methods):
      colour = colours[i % len(colours)]
      for j, r in enumerate(
        r for r in runs if r["task"] == task and r["method"] == method
      ):
        pts = sorted(
          (p["avg_layers"], 100 * p["score"]) for p in r["dev_sweep"]
        )
        xs, ys = zip(*pts)
        ax.plot(
          xs,
          ys,
          "-",
          color=colour,
          alpha=0.5,
          lw=1,
          label=method if j == 0 else None,
        )
        ax.plot(
          r["avg_layers"], 100 * r["score"], "*", color=colour, markersize=10
        )
    for r in records:
      if r["task"] == task and r["method"] == "majority":
        ax.axhline(
          100 * r["score"], ls="--", color="grey", label="majority class"
        )
    ax.set_xlabel("average layers used")
    ax.set_ylabel("dev score (points)")
    ax.set_title(f"{title}: {task}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
