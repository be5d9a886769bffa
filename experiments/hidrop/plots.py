"""tradeoff.png: accuracy and measured speed-ups against vision tokens."""

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def write_tradeoff(path: pathlib.Path, records: list[dict], title: str) -> None:
  """Left: accuracy (mean over seeds, 95 % CI bars) vs average vision
  tokens per layer, one point per method/schedule, the full model dashed
  and the constant answer dotted. Right: measured training-step and
  prefill speed-ups over the full model."""
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
  full = next((r for r in records if r["method"] == "full"), None)
  const = next((r for r in records if r["method"] == "constant"), None)
  for r in records:
    if "avg_vision_tokens" not in r:
      continue
    x = r["avg_vision_tokens"]
    label = f"{r['method']} / {r['schedule']}"
    lo, hi = r.get("accuracy_ci") or (None, None)
    err = None
    if lo is not None:
      # as_list() rounds to 6 decimals: clip the rounding below 0.
      err = [[max(r["accuracy"] - lo, 0.0)], [max(hi - r["accuracy"], 0.0)]]
    axes[0].errorbar(
      x, r["accuracy"], yerr=err, fmt="o", capsize=3, label=label
    )
    axes[0].annotate(
      r["method"],
      (x, r["accuracy"]),
      fontsize=7,
      xytext=(4, 4),
      textcoords="offset points",
    )
    axes[1].scatter(x, r["train_step_speedup"], marker="o", color="C0")
    axes[1].scatter(x, r["prefill_speedup"], marker="s", color="C1")
    axes[1].annotate(
      r["method"],
      (x, r["prefill_speedup"]),
      fontsize=7,
      xytext=(4, 4),
      textcoords="offset points",
    )
  if full is not None:
    axes[0].axhline(
      full["accuracy"],
      color="k",
      linestyle="--",
      linewidth=1,
      label=f"full model ({full['accuracy']:.3f})",
    )
  if const is not None:
    axes[0].axhline(
      const["accuracy"],
      color="gray",
      linestyle=":",
      linewidth=1,
      label=f"constant answer ({const['accuracy']:.3f})",
    )
  axes[1].axhline(1.0, color="gray", linestyle=":", linewidth=1)
  axes[1].scatter([], [], marker="o", color="C0", label="training step")
  axes[1].scatter([], [], marker="s", color="C1", label="prefill")
  axes[0].set_ylabel("test accuracy (exact match)")
  axes[1].set_ylabel("speed-up over the full model (wall time)")
  for ax in axes:
    ax.set_xlabel("average vision tokens per layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
