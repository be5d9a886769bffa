"""GPU check and timing of the HiDrop Pallas kernels against their references.

At LLaVA-1.5-7B shapes (H=32 heads of K=128, a 640-token buffer: 32 text
tokens, 576 vision tokens, 32 text tokens; bf16 and f32; batch 1..8) this
runs both kernels compiled (`interpret=False`) and

* checks them against the XLA references: `position_attention` forward
  output and its q/k/v gradients, `selection_scores` for one query row (the
  last instruction token) scoring the vision span;
* times kernel and reference side by side (`jaxexit.timing`, round-robin,
  medians after warm-up): forward for both ops, forward + backward for
  attention.

The last batch row is right-padded (its last 16 keys are invalid) so the
masks are exercised. Errors are relative: max|kernel − reference| /
max|reference|.

  python benchmarks/kernels_gpu.py                      # GPU, B = 1, 2, 4, 8
  python benchmarks/kernels_gpu.py --quick              # GPU, B = 1 and 8
  python benchmarks/kernels_gpu.py --interpret --quick  # CPU smoke, seconds

On CPU it refuses to run unless `--interpret` is given; then it runs tiny
shapes through the Pallas interpreter (a check of the script, not a timing).
Writes `benchmarks/results/kernels_gpu.json` (`--quick`:
`kernels_gpu_quick.json`; `--interpret`: `kernels_gpu_interpret.json`), a
list of records `{"op", "pass", "device", "batch", "dtype", "rel_err",
"tol", "ok", "kernel_ms", "reference_ms", "speedup"}`, and prints them as a
Markdown table. Exits with status 1 if a check fails. `--block-q/--block-k`
override the tiles (powers of two >= 16) if a size fails to compile.
"""

import argparse
import dataclasses
import functools
import pathlib
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxexit import checks, report, timing
from kernels_pallas.position_attention import (position_attention,
                                               position_attention_reference)
from kernels_pallas.selection_scores import (selection_scores,
                                             selection_scores_reference)

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"
DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}
# Relative error allowed per dtype. On GPU, f32 dots run as TF32 in both the
# Triton kernels and XLA's default precision, hence not 1e-5.
TOL = {"bfloat16": 3e-2, "float32": 5e-3}


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
    block_q, block_k: kernel tiles.
    warmup, repeats: untimed / timed round-robin rounds.
    interpret: run the kernels in the Pallas interpreter.
  """

  batches: tuple[int, ...] = (1, 2, 4, 8)
  dtypes: tuple[str, ...] = ("bfloat16", "float32")
  heads: int = 32
  kv_heads: int = 32
  head_dim: int = 128
  text: int = 64
  vision: int = 576
  block_q: int = 64
  block_k: int = 64
  warmup: int = 2
  repeats: int = 10
  interpret: bool = False

  def __post_init__(self):
    for b in self.batches:
      checks.positive_int("batches", b)
    for name in self.dtypes:
      checks.one_of("dtypes", name, tuple(DTYPES))
    for name in ("heads", "kv_heads", "head_dim", "text", "vision", "block_q",
                 "block_k", "repeats"):
      checks.positive_int(name, getattr(self, name))
    checks.positive_int("warmup", self.warmup, minimum=0)
    if self.heads % self.kv_heads:
      raise ValueError(f"heads={self.heads} must be a multiple of "
                       f"kv_heads={self.kv_heads}")


FULL = Settings()
QUICK = Settings(batches=(1, 8), repeats=5)
INTERPRET = Settings(batches=(1, 2), heads=4, kv_heads=2, head_dim=16, text=8,
                     vision=24, block_q=8, block_k=16, warmup=0, repeats=1,
                     interpret=True)
INTERPRET_QUICK = dataclasses.replace(INTERPRET, batches=(2,),
                                      dtypes=("float32",))


def make_inputs(s: Settings, batch: int, dtype) -> dict:
  """q, k, v [B, T, H(kv), K], positions and validity of the buffer."""
  t = s.text + s.vision
  rng = np.random.default_rng(batch)

  def normal(heads):
    return jnp.asarray(rng.standard_normal((batch, t, heads, s.head_dim),
                                           np.float32), dtype)

  pos = np.broadcast_to(np.arange(t, dtype=np.int32), (batch, t))
  valid = np.ones((batch, t), bool)
  valid[-1, -16:] = False  # a right-padded row
  return dict(q=normal(s.heads), k=normal(s.kv_heads), v=normal(s.kv_heads),
              pos=jnp.asarray(pos), valid=jnp.asarray(valid))


def rel_err(got, want) -> float:
  got = np.asarray(got, np.float32)
  want = np.asarray(want, np.float32)
  return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def attention_fns(s: Settings):
  """Jitted (kernel, reference) forward and forward+backward functions."""
  kernel = functools.partial(position_attention, block_q=s.block_q,
                             block_k=s.block_k, interpret=s.interpret)

  def fwd(attn):
    return jax.jit(lambda q, k, v, pos, valid: attn(q, k, v, pos, pos, valid))

  def fwd_bwd(attn):
    def loss(q, k, v, pos, valid):
      out = attn(q, k, v, pos, pos, valid).astype(jnp.float32)
      return jnp.sum(out * jnp.cos(out))  # a non-trivial cotangent
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))

  return ((fwd(kernel), fwd(position_attention_reference)),
          (fwd_bwd(kernel), fwd_bwd(position_attention_reference)))


def scores_fns(s: Settings):
  """Jitted (kernel, reference) scores of the last row over the vision span."""
  span = dict(span_start=s.text // 2, span_len=s.vision)
  kernel = functools.partial(selection_scores, block_k=s.block_k,
                             interpret=s.interpret, **span)
  reference = functools.partial(selection_scores_reference, **span)

  def fn(scores):
    def run(q, k, v, pos, valid):
      del v
      return scores(q[:, -1:], k, pos[:, -1:], pos, valid[:, -1:], valid)
    return jax.jit(run)

  return fn(kernel), fn(reference)


def measure(s: Settings, batch: int, dtype_name: str) -> list[dict]:
  """Checks and times every (op, pass) at one batch size and dtype."""
  args = tuple(make_inputs(s, batch, DTYPES[dtype_name]).values())
  (fwd_k, fwd_r), (bwd_k, bwd_r) = attention_fns(s)
  cases = [("position_attention", "fwd", fwd_k, fwd_r),
           ("position_attention", "fwd+bwd", bwd_k, bwd_r),
           ("selection_scores", "fwd", *scores_fns(s))]
  records = []
  for op, which, kernel, reference in cases:
    got, want = kernel(*args), reference(*args)
    if which == "fwd+bwd":  # the worst of dq, dk, dv
      err = max(rel_err(g, w) for g, w in zip(got, want))
    else:
      err = rel_err(got, want)
    times = timing.time_side_by_side(
        {"kernel": (kernel, args), "reference": (reference, args)},
        warmup=s.warmup, repeats=s.repeats)
    k_ms, r_ms = times["kernel"].median * 1e3, times["reference"].median * 1e3
    records.append(dict(op=op, **{"pass": which},
                        device=jax.devices()[0].device_kind, batch=batch,
                        dtype=dtype_name, rel_err=err, tol=TOL[dtype_name],
                        ok=bool(err <= TOL[dtype_name]), kernel_ms=k_ms,
                        reference_ms=r_ms, speedup=r_ms / k_ms))
  return records


def render(records: list[dict], s: Settings) -> str:
  """Setup line and Markdown table."""
  header = ["op", "pass", "B", "dtype", "rel err", "ok", "kernel ms",
            "reference ms", "speed-up"]
  rows = [[r["op"], r["pass"], r["batch"], r["dtype"], f'{r["rel_err"]:.1e}',
           "yes" if r["ok"] else "NO", f'{r["kernel_ms"]:.3f}',
           f'{r["reference_ms"]:.3f}', f'{r["speedup"]:.2f}x']
          for r in records]
  mode = "Pallas interpreter" if s.interpret else "compiled"
  return (f"{jax.devices()[0].device_kind} ({platform.machine()}), JAX "
          f"{jax.__version__}, kernels {mode}; H={s.heads}, Hkv={s.kv_heads}, "
          f"K={s.head_dim}, T={s.text}+{s.vision}, blocks "
          f"{s.block_q}/{s.block_k}; median of {s.repeats} round-robin "
          f"repeats after {s.warmup} warm-up.\n\n"
          + report.markdown_table(header, rows))


def main(argv: list[str] | None = None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="fewer batch sizes and repeats")
  parser.add_argument("--interpret", action="store_true",
                      help="tiny shapes in the Pallas interpreter (CPU smoke)")
  parser.add_argument("--block-q", type=int, default=None,
                      help="query tile (default: the preset's)")
  parser.add_argument("--block-k", type=int, default=None,
                      help="key tile (default: the preset's)")
  parser.add_argument("--out", type=pathlib.Path, default=None)
  args = parser.parse_args(argv)
  if args.interpret:
    settings = INTERPRET_QUICK if args.quick else INTERPRET
    name = "kernels_gpu_interpret.json"
  elif jax.default_backend() != "gpu":
    sys.exit(f"benchmarks/kernels_gpu.py needs a GPU; JAX's backend is "
             f"{jax.default_backend()!r}. Pass --interpret for a CPU smoke "
             "run of tiny shapes.")
  else:
    settings = QUICK if args.quick else FULL
    name = "kernels_gpu_quick.json" if args.quick else "kernels_gpu.json"
  settings = dataclasses.replace(
      settings, block_q=args.block_q or settings.block_q,
      block_k=args.block_k or settings.block_k)
  records = [r for dtype in settings.dtypes for batch in settings.batches
             for r in measure(settings, batch, dtype)]
  print(render(records, settings))
  report.write_json(args.out or RESULTS / name, records)
  failed = [r for r in records if not r["ok"]]
  if failed:
    sys.exit(f"{len(failed)} check(s) above tolerance: " + ", ".join(
        f'{r["op"]} {r["pass"]} B={r["batch"]} {r["dtype"]}' for r in failed))
  return records


if __name__ == "__main__":
  main()
