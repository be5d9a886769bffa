"""Wall-clock of the three execution modes against the full model.

A 12-layer encoder (d=256, 4 heads, MLP 1024, seq 128) with per-example exit
depths drawn so the average depth is 3, 6 and 9 of 12, at batch 1 and 32.
Every candidate is timed side by side in one run (round-robin, median after
warm-up), so machine noise hits all of them alike.

  python benchmarks/exit_modes.py           # full run, rewrites BENCHMARKS.md
  python benchmarks/exit_modes.py --quick   # reduced repeats, < 2 minutes

Writes `benchmarks/results/exit_modes.json`: a list of records
`{"mode", "batch", "avg_depth", "theoretical_speedup", "realised_speedup",
"ratio", ...}` with ratio = realised / theoretical.

Batch 1 times a sequence of single-example calls whose depths follow the
same distribution (the per-example latency a user sees); batch 32 times one
call on a batch whose depths are spread over the distribution.
"""

import argparse
import json
import pathlib
import platform

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxexit import execution, report, timing
from jaxexit.exits import rules
from jaxexit.nn.encoder import EncoderConfig, ExitEncoder

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results" / "exit_modes.json"
BENCHMARKS_MD = HERE.parent / "BENCHMARKS.md"
CFG = EncoderConfig(
  num_layers=12,
  d_model=256,
  num_heads=4,
  d_ff=1024,
  vocab_size=1024,
  max_len=128,
  num_classes=2,
)
# Uniform depth ranges with the widest spread that keeps the target mean.
DEPTH_RANGES = {3: (1, 5), 6: (1, 11), 9: (6, 12)}
# "compacted" uses the library's default buckets (pow2_half); the other two
# bucket policies are timed beside it.
MODES = (
  "simulate",
  "early_stop",
  "compacted",
  "compacted[pow2]",
  "compacted[exact]",
)


def spread_depths(avg_depth: int, n: int, seed: int) -> np.ndarray:
  """n depths evenly covering the range of `avg_depth`, shuffled."""
  lo, hi = DEPTH_RANGES[avg_depth]
  depths = lo + (np.arange(n) * (hi - lo + 1)) // n
  return np.random.default_rng(seed).permutation(depths).astype(np.int32)


def build(batch: int):
  model = ExitEncoder(CFG, rngs=nnx.Rngs(0))
  stack, params = model.exit_stack()
  tokens = jax.random.randint(
    jax.random.key(1), (batch, CFG.max_len), 1, CFG.vocab_size
  )
  carry = jax.jit(model.embed_tokens)(tokens)

  full = execution.make_full_model(stack)

  rule = rules.preset_depth()
  runners = {
    mode: execution.make_runner(mode, stack, rule)
    for mode in ("simulate", "early_stop", "compacted")
  }
  for policy in ("pow2", "exact"):
    runners[f"compacted[{policy}]"] = execution.CompactedRunner(
      stack, rule, buckets=policy
    )
  return params, carry, full, runners


def candidates(batch: int, depths: np.ndarray):
  """{name: (fn, args)}; each fn processes every depth in `depths` once."""
  params, carry, full, runners = build(batch)
  if batch == 1:
    calls = [jnp.asarray(depths[i : i + 1]) for i in range(len(depths))]
  else:
    calls = [jnp.asarray(depths)]

  def over_calls(fn):
    return lambda: [fn(d) for d in calls]

  fns = {"full": over_calls(lambda d: full(params, carry))}
  for mode, runner in runners.items():
    fns[mode] = over_calls(
      lambda d, runner=runner: runner(params, carry, rule_inputs=d).exit_layer
    )
  return {name: (fn, ()) for name, fn in fns.items()}, runners


def measure(
  batch: int, avg_depth: int, warmup: int, repeats: int, batch1_calls: int
) -> list[dict]:
  n = batch1_calls if batch == 1 else batch
  depths = spread_depths(avg_depth, n, seed=avg_depth)
  fns, runners = candidates(batch, depths)
  timings = timing.time_side_by_side(fns, warmup=warmup, repeats=repeats)
  theoretical = CFG.num_layers / float(depths.mean())
  records = []
  for mode in MODES:
    realised = timings["full"].median / timings[mode].median
    records.append(
      {
        "mode": mode,
        "batch": batch,
        "avg_depth": float(depths.mean()),
        "theoretical_speedup": round(theoretical, 4),
        "realised_speedup": round(realised, 4),
        "ratio": round(realised / theoretical, 4),
        "full_seconds": timings["full"].median,
        "mode_seconds": timings[mode].median,
        "compiled_programs": (
          runners[mode].num_compiled_programs()
          if mode.startswith("compacted")
          else 1
        ),
      }
    )
  return records


def render(records: list[dict], args) -> str:
  rows = [
    [
      r["mode"],
      r["batch"],
      f"{r['avg_depth']:.2f}",
      f"{r['theoretical_speedup']:.2f}x",
      f"{r['realised_speedup']:.2f}x",
      f"{r['ratio']:.2f}",
      f"{r['full_seconds'] * 1e3:.1f}",
      f"{r['mode_seconds'] * 1e3:.1f}",
      r["compiled_programs"],
    ]
    for r in records
  ]
  header = [
    "mode",
    "batch",
    "avg depth",
    "theoretical",
    "realised",
    "ratio",
    "full ms",
    "mode ms",
    "programs",
  ]
  return (
    f"12-layer encoder (d=256, 4 heads, MLP 1024, seq 128), fp32, "
    f"{jax.devices()[0].platform.upper()} "
    f"({platform.processor() or platform.machine()}, "
    f"{jax.local_device_count()} device), median of {args.repeats} "
    f"round-robin repeats after {args.warmup} warm-up; batch 1 = "
    f"{args.batch1_calls} single-example calls. Command: "
    f"`python benchmarks/exit_modes.py{' --quick' if args.quick else ''}`."
    "\n\n" + report.markdown_table(header, rows)
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--quick",
    action="store_true",
    help="fewer repeats; does not rewrite BENCHMARKS.md",
  )
  parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
  args = parser.parse_args()
  args.repeats, args.warmup = (3, 1) if args.quick else (7, 2)
  args.batch1_calls = 6 if args.quick else 12
  records = []
  for batch in (1, 32):
    for avg_depth in DEPTH_RANGES:
      records += measure(
        batch, avg_depth, args.warmup, args.repeats, args.batch1_calls
      )
      print(json.dumps(records[-len(MODES) :]), flush=True)
  text = render(records, args)
  print(text)
  report.write_json(args.out, records)
  if not args.quick:
    report.write_section(BENCHMARKS_MD, "exit_modes", text)


if __name__ == "__main__":
  main()
