"""Device check of the HiDrop Pallas kernels: correctness, speed, roofline.

At LLaVA-1.5-7B shapes (H=32 heads of K=128, a 640-token buffer: 32 text
tokens, 576 vision tokens, 32 text tokens; bf16 and f32; batch 1..8) this
runs both kernels on the backend's own lowering (GPU: Triton, TPU: Mosaic)
and

1. checks them against the XLA references: `position_attention` forward
   output and its q/k/v gradients, `selection_scores` for one query row
   (the last instruction token) scoring the vision span;
2. times kernel and XLA reference side by side (`jaxexit.timing`,
   round-robin, medians after warm-up): forward for both ops, forward +
   backward for attention;
3. writes `benchmarks/results/kernels.json` (backend, device, and per
   record the achieved TFLOP/s and GB/s of both, and the kernel's fraction
   of the device's peak from `PEAKS`; null where the peak is unknown, on
   CPU and in interpret mode) and the `kernels` section of BENCHMARKS.md.

  python benchmarks/pallas_kernels.py --quick          # device check
  python benchmarks/pallas_kernels.py                  # B = 1, 2, 4, 8
  python benchmarks/pallas_kernels.py --backend interpret --quick  # CPU

`--backend auto` (default) takes JAX's backend and refuses a CPU;
`interpret` runs tiny shapes through both lowerings' interpreters (the GPU
one in Pallas' interpreter, the TPU one in TPU interpret mode): a check of
the kernels and the script, whose timings say nothing about kernel speed.
The quick run takes about a minute on an H100 (compiles dominate); the full
one a few minutes. Exits with status 1 if a check fails.

FLOPs count the useful work once, for kernel and reference alike: attention
4·K·H per visible (query, key) pair forward, 3.5x that forward + backward
(FlashAttention-2's convention: backward = 2.5 forwards); scores 2·K·H·Q·N.
Bytes are the least HBM traffic: each operand read and each result written
once. Errors are relative: max|kernel − reference| / max|reference|.
"""

import argparse
import dataclasses
import functools
import json
import pathlib
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxexit import checks, report, timing
from kernels_pallas.position_attention import (
  PositionAttentionBlocks,
  position_attention,
  position_attention_reference,
)
from kernels_pallas.selection_scores import (
  SelectionScoresBlocks,
  selection_scores,
  selection_scores_reference,
)

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results" / "kernels.json"
BENCHMARKS_MD = HERE.parent / "BENCHMARKS.md"
DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}
# Relative error allowed per dtype. f32 dots at default precision run as
# TF32 on GPU (Triton and XLA) and as bf16 passes on TPU, hence not 1e-5.
TOL = {
  "gpu": {"bfloat16": 3e-2, "float32": 5e-3},
  "tpu": {"bfloat16": 3e-2, "float32": 3e-2},
  "interpret": {"bfloat16": 3e-2, "float32": 1e-5},
}
# Dense peaks per chip from the vendors' datasheets: TFLOP/s for bf16 and
# for f32 dots at default precision (TF32 tensor cores on GPU; on TPU the
# bf16 peak, an upper bound), and HBM GB/s. First matching entry wins.
PEAKS = (
  ("H100 PCIe", dict(bfloat16=756.0, float32=378.0, gbps=2000.0)),
  ("H100", dict(bfloat16=989.4, float32=494.7, gbps=3350.0)),
  ("H200", dict(bfloat16=989.4, float32=494.7, gbps=4800.0)),
  ("A100-SXM4-40GB", dict(bfloat16=312.0, float32=156.0, gbps=1555.0)),
  ("A100", dict(bfloat16=312.0, float32=156.0, gbps=2039.0)),
  ("TPU v4", dict(bfloat16=275.0, float32=275.0, gbps=1200.0)),
  ("TPU v5 lite", dict(bfloat16=197.0, float32=197.0, gbps=819.0)),
  ("TPU v5e", dict(bfloat16=197.0, float32=197.0, gbps=819.0)),
  ("TPU v5p", dict(bfloat16=459.0, float32=459.0, gbps=2765.0)),
  ("TPU v5", dict(bfloat16=459.0, float32=459.0, gbps=2765.0)),
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
  """Shapes and repeats of one run.

  Attributes:
    batches: batch sizes B to run.
    dtypes: names in `DTYPES`.
    heads, kv_heads: H query heads, Hkv key/value heads (H % Hkv == 0).
    head_dim: K.
    text, vision: the buffer is text/2 text tokens, `vision` vision tokens,
      then text - text/2 text tokens.
    warmup, repeats: untimed / timed round-robin rounds.
  """

  batches: tuple[int, ...] = (1, 2, 4, 8)
  dtypes: tuple[str, ...] = ("bfloat16", "float32")
  heads: int = 32
  kv_heads: int = 32
  head_dim: int = 128
  text: int = 64
  vision: int = 576
  warmup: int = 2
  repeats: int = 10

  def __post_init__(self):
    for b in self.batches:
      checks.positive_int("batches", b)
    for name in self.dtypes:
      checks.one_of("dtypes", name, tuple(DTYPES))
    for name in ("heads", "kv_heads", "head_dim", "text", "vision", "repeats"):
      checks.positive_int(name, getattr(self, name))
    checks.positive_int("warmup", self.warmup, minimum=0)
    if self.heads % self.kv_heads:
      raise ValueError(
        f"heads={self.heads} must be a multiple of kv_heads={self.kv_heads}"
      )


FULL = Settings()
QUICK = Settings(batches=(1, 8), repeats=5)
INTERPRET = Settings(
  batches=(1, 2),
  heads=4,
  kv_heads=2,
  head_dim=16,
  text=8,
  vision=24,
  warmup=0,
  repeats=1,
)
INTERPRET_QUICK = dataclasses.replace(
  INTERPRET, batches=(2,), dtypes=("float32",)
)
# Interpret runs use each lowering's smallest legal tiles: several blocks.
INTERPRET_BLOCKS = {
  "gpu": (
    PositionAttentionBlocks(block_q=16, block_k=16),
    SelectionScoresBlocks(block_k=16),
  ),
  "tpu": (
    PositionAttentionBlocks(block_q=8, block_k=128),
    SelectionScoresBlocks(block_k=128),
  ),
}


@dataclasses.dataclass(frozen=True)
class Target:
  """One lowering to run: backend, interpreter or not, tiles."""

  backend: str  # "gpu" or "tpu"
  interpret: bool
  attention: PositionAttentionBlocks
  scores: SelectionScoresBlocks


def peak_for(device_kind: str) -> dict | None:
  for key, peak in PEAKS:
    if key in device_kind:
      return peak
  return None


def make_inputs(s: Settings, batch: int, dtype) -> tuple:
  """q, k, v [B, T, H(kv), K], positions [B, T] and validity [B, T]."""
  t = s.text + s.vision
  rng = np.random.default_rng(batch)

  def normal(heads):
    return jnp.asarray(
      rng.standard_normal((batch, t, heads, s.head_dim), np.float32), dtype
    )

  pos = np.broadcast_to(np.arange(t, dtype=np.int32), (batch, t))
  valid = np.ones((batch, t), bool)
  valid[-1, -16:] = False  # a right-padded row
  return (
    normal(s.heads),
    normal(s.kv_heads),
    normal(s.kv_heads),
    jnp.asarray(pos),
    jnp.asarray(valid),
  )


def work(s: Settings, args) -> dict:
  """(op, pass) -> (useful FLOPs, least HBM bytes) of one batch."""
  q, k, _, pos, valid = args
  pos, valid = np.asarray(pos), np.asarray(valid)
  pairs = ((pos[:, None, :] <= pos[:, :, None]) & valid[:, None, :]).sum()
  fwd = 4.0 * s.head_dim * s.heads * pairs
  q_bytes, kv_bytes = q.nbytes, k.nbytes
  b, t = pos.shape
  return {
    ("position_attention", "fwd"): (fwd, 2 * q_bytes + 2 * kv_bytes),
    ("position_attention", "fwd+bwd"): (3.5 * fwd, 6 * q_bytes + 6 * kv_bytes),
    ("selection_scores", "fwd"): (
      2.0 * s.head_dim * s.heads * b * t,
      kv_bytes + q_bytes // t + 4 * b * s.vision,
    ),
  }


def rel_err(got, want) -> float:
  got = np.asarray(got, np.float32)
  want = np.asarray(want, np.float32)
  return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def cases(s: Settings, target: Target):
  """(op, pass, kernel, reference): jitted functions of make_inputs' args."""
  kernel = functools.partial(
    position_attention,
    blocks=target.attention,
    backend=target.backend,
    interpret=target.interpret,
  )

  def fwd(attn):
    return jax.jit(lambda q, k, v, pos, valid: attn(q, k, v, pos, pos, valid))

  def fwd_bwd(attn):
    def loss(q, k, v, pos, valid):
      out = attn(q, k, v, pos, pos, valid).astype(jnp.float32)
      return jnp.sum(out * jnp.cos(out))  # a non-trivial cotangent

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))

  span = dict(span_start=s.text // 2, span_len=s.vision)

  def last_row(scores):
    def run(q, k, v, pos, valid):
      del v
      return scores(q[:, -1:], k, pos[:, -1:], pos, valid[:, -1:], valid)

    return jax.jit(run)

  scores = functools.partial(
    selection_scores,
    blocks=target.scores,
    backend=target.backend,
    interpret=target.interpret,
    **span,
  )
  return [
    (
      "position_attention",
      "fwd",
      fwd(kernel),
      fwd(position_attention_reference),
    ),
    (
      "position_attention",
      "fwd+bwd",
      fwd_bwd(kernel),
      fwd_bwd(position_attention_reference),
    ),
    (
      "selection_scores",
      "fwd",
      last_row(scores),
      last_row(functools.partial(selection_scores_reference, **span)),
    ),
  ]


def measure(
  s: Settings, target: Target, batch: int, dtype_name: str, peak: dict | None
) -> list[dict]:
  """Checks and times every (op, pass) at one batch size and dtype."""
  args = make_inputs(s, batch, DTYPES[dtype_name])
  tol = TOL["interpret" if target.interpret else target.backend][dtype_name]
  records = []
  for op, which, kernel, reference in cases(s, target):
    got, want = kernel(*args), reference(*args)
    if which == "fwd+bwd":  # the worst of dq, dk, dv
      err = max(rel_err(g, w) for g, w in zip(got, want))
    else:
      err = rel_err(got, want)
    times = timing.time_side_by_side(
      {"kernel": (kernel, args), "reference": (reference, args)},
      warmup=s.warmup,
      repeats=s.repeats,
    )
    flops, nbytes = work(s, args)[op, which]
    record = dict(
      op=op,
      **{"pass": which},
      backend=target.backend,
      interpret=target.interpret,
      batch=batch,
      dtype=dtype_name,
      rel_err=err,
      tol=tol,
      ok=bool(err <= tol),
    )
    for name, t in times.items():
      seconds = t.median
      record[f"{name}_ms"] = seconds * 1e3
      record[f"{name}_tflops"] = flops / seconds / 1e12
      record[f"{name}_gbps"] = nbytes / seconds / 1e9
    record["speedup"] = record["reference_ms"] / record["kernel_ms"]
    usable = peak is not None and not target.interpret
    record["kernel_peak_flops_frac"] = (
      record["kernel_tflops"] / peak[dtype_name] if usable else None
    )
    record["kernel_peak_bw_frac"] = (
      record["kernel_gbps"] / peak["gbps"] if usable else None
    )
    records.append(record)
  return records


def render(result: dict) -> str:
  """Setup paragraph and Markdown table of one run."""
  header = [
    "op",
    "pass",
    "lowering",
    "B",
    "dtype",
    "rel err",
    "ok",
    "kernel ms",
    "XLA ms",
    "speed-up",
    "kernel TFLOP/s",
    "kernel GB/s",
    "peak FLOP/s",
    "peak BW",
  ]

  def pct(x):
    return "n/a" if x is None else f"{100 * x:.1f}%"

  rows = [
    [
      r["op"],
      r["pass"],
      r["backend"] + (" interp" if r["interpret"] else ""),
      r["batch"],
      r["dtype"],
      f"{r['rel_err']:.1e}",
      "yes" if r["ok"] else "NO",
      f"{r['kernel_ms']:.3f}",
      f"{r['reference_ms']:.3f}",
      f"{r['speedup']:.2f}x",
      f"{r['kernel_tflops']:.3g}",
      f"{r['kernel_gbps']:.3g}",
      pct(r["kernel_peak_flops_frac"]),
      pct(r["kernel_peak_bw_frac"]),
    ]
    for r in result["records"]
  ]
  s = result["settings"]
  return (
    f"{result['device']} ({result['machine']}), JAX {result['jax']}, "
    f"backend `{result['backend']}`; H={s['heads']}, "
    f"Hkv={s['kv_heads']}, K={s['head_dim']}, "
    f"T={s['text']}+{s['vision']}; median of {s['repeats']} "
    f"round-robin repeats after {s['warmup']} warm-up. "
    f"{result['note']} Command: `{result['command']}`.\n\n"
    + report.markdown_table(header, rows)
  )


def targets(backend: str, args) -> tuple[str, Settings, list[Target]]:
  """Resolved backend name, settings and lowerings of a --backend value."""
  if backend == "interpret":
    s = INTERPRET_QUICK if args.quick else INTERPRET
    return (
      "interpret",
      s,
      [Target(b, True, *INTERPRET_BLOCKS[b]) for b in ("gpu", "tpu")],
    )
  have = jax.default_backend()
  if backend == "auto":
    backend = have
  if backend not in ("gpu", "tpu") or have != backend:
    sys.exit(
      f"benchmarks/pallas_kernels.py --backend {args.backend} needs a GPU or "
      f"TPU; JAX's backend is {have!r}. Pass --backend interpret for a "
      "CPU smoke run of tiny shapes."
    )
  attention = PositionAttentionBlocks.for_backend(backend)
  attention = dataclasses.replace(
    attention,
    block_q=args.block_q or attention.block_q,
    block_k=args.block_k or attention.block_k,
  )
  scores = SelectionScoresBlocks(
    block_k=args.block_k or SelectionScoresBlocks.for_backend(backend).block_k
  )
  attention.check(backend)
  scores.check(backend)
  return (
    backend,
    QUICK if args.quick else FULL,
    [Target(backend, False, attention, scores)],
  )


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--backend", default="auto", choices=("auto", "gpu", "tpu", "interpret")
  )
  parser.add_argument(
    "--quick", action="store_true", help="fewer batch sizes and repeats"
  )
  parser.add_argument(
    "--block-q",
    type=int,
    default=None,
    help="query tile (default: the backend's)",
  )
  parser.add_argument(
    "--block-k",
    type=int,
    default=None,
    help="key tile of both kernels (default: the backend's)",
  )
  parser.add_argument(
    "--out",
    type=pathlib.Path,
    default=None,
    help="JSON path; given, BENCHMARKS.md is left alone",
  )
  args = parser.parse_args(argv)
  backend, settings, runs = targets(args.backend, args)
  device = jax.devices()[0].device_kind
  peak = None if backend == "interpret" else peak_for(device)
  records = [
    r
    for target in runs
    for dtype in settings.dtypes
    for batch in settings.batches
    for r in measure(settings, target, batch, dtype, peak)
  ]
  note = (
    "Interpret mode on CPU: a correctness check of both lowerings "
    "(GPU one in Pallas' interpreter, TPU one in TPU interpret mode); "
    "the timings measure the interpreters and say nothing about kernel "
    "speed, and no peak applies."
    if backend == "interpret"
    else f"Compiled {backend} kernels; peak fractions against {peak}."
    if peak
    else f"Compiled {backend} kernels; no peak known for {device!r}."
  )
  result = dict(
    backend=backend,
    device=device,
    machine=platform.machine(),
    jax=jax.__version__,
    peak=peak,
    note=note,
    command="python benchmarks/pallas_kernels.py "
    + " ".join(argv if argv is not None else sys.argv[1:]),
    settings=dataclasses.asdict(settings),
    records=records,
  )
  text = render(result)
  print(text)
  out = args.out or RESULTS
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=1) + "\n")
  if args.out is None:
    report.write_section(BENCHMARKS_MD, "kernels", text)
  failed = [r for r in records if not r["ok"]]
  if failed:
    sys.exit(
      f"{len(failed)} check(s) above tolerance: "
      + ", ".join(
        f"{r['op']} {r['pass']} {r['backend']} B={r['batch']} {r['dtype']}"
        for r in failed
      )
    )
  return result


if __name__ == "__main__":
  main()
