"""tradeoff.png: latency and cloud compute vs quality over θ."""

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def write_tradeoff(path: pathlib.Path, records: list[dict], title: str) -> None:
  """Two panels (ms/token, cloud compute share) against quality (token
  agreement with cloud-only); one curve over θ per network setting, its
  cloud-only point as a star of the same colour, standalone as a cross."""
  nets = sorted(
    {
      (r["rtt_ms"], r["bandwidth_mbit"])
      for r in records
      if r["rtt_ms"] is not None
    }
  )
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  keys = (("latency_per_token_ms", "ms per token (measured)"),)
  keys += (("cloud_flops_fraction", "cloud compute / cloud-only"),)
  for ax, (key, label) in zip(axes, keys):
    for i, net in enumerate(nets):
      color = f"C{i}"
      mine = [r for r in records if (r["rtt_ms"], r["bandwidth_mbit"]) == net]
      collab = sorted(
        (r for r in mine if r["mode"] == "collaborative"),
        key=lambda r: r["theta"],
      )
      ax.plot(
        [r["quality"] for r in collab],
        [r[key] for r in collab],
        "o-",
        color=color,
        label=f"CE-CoLLM, {net[0]:g} ms / {net[1]:g} Mbit",
      )
      for r in collab:
        ax.annotate(f"θ={r['theta']:g}", (r["quality"], r[key]), fontsize=7)
      for r in mine:
        if r["mode"] in ("cloud_only", "naive", "latency_aware"):
          mark = {"cloud_only": "*", "naive": "s"}.get(r["mode"], "D")
          ax.plot(r["quality"], r[key], mark, color=color, markersize=9)
    for r in records:
      if r["mode"] == "standalone":
        ax.plot(r["quality"], r[key], "kx", markersize=9, label="standalone")
    ax.set_xlabel("quality: token agreement with cloud-only")
    ax.set_ylabel(label)
    ax.set_title(
      f"{label} (★ cloud-only, ■ naive, ◆ latency-aware)", fontsize=9
    )
  axes[0].legend(fontsize=7)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
