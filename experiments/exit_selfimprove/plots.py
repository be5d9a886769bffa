"""k_step.png and training.png: K-step curves and training dynamics."""

import pathlib

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _curve(records, method, decoding, field):
  rows = [
    r for r in records if r["method"] == method and r["decoding"] == decoding
  ]
  ks = sorted({r["k"] for r in rows})
  seeds = sorted({r["seed"] for r in rows})
  values = np.array(
    [
      [
        next(r[field] for r in rows if r["k"] == k and r["seed"] == s)
        for k in ks
      ]
      for s in seeds
    ]
  )
  return np.array(ks), values.mean(0), values.std(0)


def write_k_step(
  path: pathlib.Path, records: list[dict], methods, title: str
) -> None:
  """Quality and success vs k (temperature 1 and greedy), mean ± std over
  seeds, one curve per method."""
  panels = [
    ("sample", "quality"),
    ("sample", "success"),
    ("greedy", "quality"),
    ("greedy", "success"),
  ]
  fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
  for ax, (decoding, field) in zip(axes, panels):
    for method in methods:
      ks, mean, std = _curve(records, method, decoding, field)
      ax.plot(ks, mean, marker="o", markersize=3, label=method)
      ax.fill_between(ks, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("self-improvement step k")
    ax.set_ylabel(field)
    ax.set_title(f"{field} ({'T=1 avg' if decoding == 'sample' else 'greedy'})")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


TRAINING_PANELS = (
  ("quality", "rollout quality"),
  ("sampled_depth", "mean sampled depth"),
  ("replay_fraction", "replay fraction"),
  ("sample_from_iteration", "replayed entry's iteration"),
)


def write_training(path: pathlib.Path, logs: dict, title: str) -> None:
  """Training dynamics per method (mean over seeds), like paper Fig. 6."""
  fig, axes = plt.subplots(1, len(TRAINING_PANELS), figsize=(18, 4.0))
  for ax, (field, label) in zip(axes, TRAINING_PANELS):
    for method, metrics in logs.items():
      values = np.asarray(metrics[field]).mean(0)
      ax.plot(np.arange(1, len(values) + 1), values, label=method, linewidth=1)
    ax.set_xlabel("iteration")
    ax.set_title(label)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
