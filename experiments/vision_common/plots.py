"""Accuracy vs average FLOPs, with optional reliability diagrams."""

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxexit.calibration import ReliabilityBins, ece_from_bins  # noqa: E402


def _errors(rows: list[dict], field: str, scale: float) -> np.ndarray | None:
  """[2, n] distances from the mean to a 95 % interval's ends, or None."""
  cis = [r.get(f"{field}_ci") for r in rows]
  if any(ci is None or None in ci for ci in cis):
    return None
  mean = np.array([r[field] for r in rows]) / scale
  lo, hi = (np.array(x) / scale for x in zip(*cis))
  return np.maximum(np.stack([mean - lo, hi - mean]), 0.0)


def _curve_panel(ax, records: list[dict]) -> None:
  """Accuracy vs MFLOPs, one line per method, "full" and constant rows as
  dashed lines; 95 % intervals over seeds as error bars when present."""
  for method in dict.fromkeys(r["method"] for r in records):
    rows = [r for r in records if r["method"] == method]
    if method in ("full", "majority"):
      ax.axhline(
        rows[0]["accuracy"],
        color="k" if method == "full" else "gray",
        linestyle="--",
        linewidth=1,
        label=f"{method} ({rows[0]['accuracy']:.3f})",
      )
      continue
    rows = sorted(rows, key=lambda r: r["avg_flops"])
    ax.errorbar(
      [r["avg_flops"] / 1e6 for r in rows],
      [r["accuracy"] for r in rows],
      xerr=_errors(rows, "avg_flops", 1e6),
      yerr=_errors(rows, "accuracy", 1.0),
      marker="o",
      markersize=4,
      capsize=2,
      label=method,
    )
  ax.set_xlabel("average MFLOPs per example")
  ax.set_ylabel("test accuracy")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)


def _reliability_panel(ax, name: str, bins: ReliabilityBins) -> None:
  """Accuracy per confidence bin against the diagonal."""
  used = bins.count > 0
  left, width = bins.edges[:-1], np.diff(bins.edges)
  ax.bar(
    left[used],
    bins.accuracy[used],
    width=width[used],
    align="edge",
    alpha=0.6,
    edgecolor="k",
    linewidth=0.5,
    label=f"{name} (ECE={ece_from_bins(bins):.3f})",
  )
  ax.plot([0, 1], [0, 1], color="gray", linestyle=":", label="perfect")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_xlabel("confidence")
  ax.set_ylabel("accuracy")
  ax.legend(fontsize=8, loc="upper left")


def curve_figure(
  records: list[dict],
  path: pathlib.Path,
  *,
  title: str,
  reliability: dict[str, ReliabilityBins] | None = None,
) -> None:
  """Writes the accuracy-vs-FLOPs curve and reliability diagrams as a PNG.

  The curve is the left panel; each entry of `reliability` adds a diagram to
  its right.

  Args:
    records: result records with "method", "accuracy" and "avg_flops".
    path: PNG file to write.
    title: figure title.
    reliability: method name -> `ReliabilityBins` of its gated predictions.
  """
  reliability = reliability or {}
  panels = 1 + len(reliability)
  fig, axes = plt.subplots(
    1, panels, figsize=(5.5 + 4 * (panels - 1), 4), dpi=120, squeeze=False
  )
  _curve_panel(axes[0, 0], records)
  for ax, (name, bins) in zip(axes[0, 1:], reliability.items()):
    _reliability_panel(ax, name, bins)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
