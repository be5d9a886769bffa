"""curves.png: consistency, accuracy and speed-up against FLOPs."""

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _lines(records):
  """(label, rows sorted by FLOPs) per (classifier, state mode)."""
  keys = dict.fromkeys(
    (r["classifier"], r["state_mode"])
    for r in records
    if r["classifier"] not in ("none", "constant")
  )
  for kind, mode in keys:
    rows = sorted(
      (
        r
        for r in records
        if r["classifier"] == kind and r["state_mode"] == mode
      ),
      key=lambda r: r["flops_fraction"],
    )
    yield f"{kind} / {mode}", rows


def write_curves(path: pathlib.Path, records: list[dict], title: str) -> None:
  """Three panels sharing the FLOPs-fraction axis (full model = 1)."""
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
  full = next(r for r in records if r["classifier"] == "none")
  for label, rows in _lines(records):
    x = [r["flops_fraction"] for r in rows]
    kw = dict(marker="o", markersize=4, label=label)
    axes[0].plot(x, [r["consistency"] for r in rows], **kw)
    axes[1].plot(x, [r["accuracy"] for r in rows], **kw)
    axes[2].plot(
      [r["theoretical_speedup"] for r in rows],
      [r["realised_speedup"] for r in rows],
      **kw,
    )
  axes[1].axhline(
    full["accuracy"],
    color="k",
    linestyle="--",
    linewidth=1,
    label=f"full model ({full['accuracy']:.3f})",
  )
  top = max(r.get("theoretical_speedup", 1.0) for r in records)
  axes[2].plot(
    [0, top],
    [0, top],
    color="gray",
    linestyle=":",
    label="realised = theoretical",
  )
  labels = [
    ("FLOPs per token / full model", "token consistency with the full model"),
    ("FLOPs per token / full model", "TruthfulQA ROUGE acc"),
    ("theoretical speed-up (FLOPs)", "realised speed-up (tokens/s)"),
  ]
  for ax, (xl, yl) in zip(axes, labels):
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    ax.grid(alpha=0.3)
  axes[2].legend(fontsize=7)
  axes[0].legend(fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
