"""Wall time of vision-token pruning against the full model, one model size.

`experiments.hidrop.configs.BENCHMARK` (the `cpu` decoder with a
CLIP-style ViT on 64 px, patch 4 -> 256 vision tokens, 8-layer d=128 Llama
decoder), untrained weights (the
time does not depend on them), runs the real training step (forward,
backward, AdamW) and the prefill (image tower + pruned decoder up to the
answer logits) of every method: the full model, HiDrop Tok64 scaled to 8
layers, PyramidDrop `s4_r0.5` and FastV `k2_r0.5`. All training steps are
timed side by side in one interleaved round-robin, then all prefills
(`experiments.hidrop.evaluate.time_methods`: medians after warm-up).

  python benchmarks/token_pruning.py          # batch 32, ~4 min, BENCHMARKS.md
  python benchmarks/token_pruning.py --quick  # batch 8, 3 rounds, ~1.5 min

Writes `benchmarks/results/token_pruning.json` (`--quick`:
`token_pruning_quick.json`, and BENCHMARKS.md is left alone unless
`--markdown` names a file): one record per method with

* decoder_flops_fraction: analytic decoder prefill FLOPs over the full
  model's (`jaxexit.pruning.prefill_flops_fraction`; no image tower, no LM
  head);
* e2e_flops_fraction: XLA-counted FLOPs of the whole compiled prefill
  (image tower, projector, scoring, decoder, LM head) over the full
  model's (`jaxexit.execution.flops.xla_flops`, always on the XLA path);
* train_step_ms / prefill_ms (medians) and the speed-ups t_full / t_method
  (`*_min_speedup`: the same on each candidate's fastest round);
* load_avg_1m: the 1-minute load average at the start of the run and
  after the timing rounds.
"""

import argparse
import dataclasses
import os
import pathlib
import platform
import time

import jax
import jax.numpy as jnp

from experiments.hidrop import configs, evaluate, run
from jaxexit import report
from jaxexit.execution.flops import xla_flops
from jaxexit.pruning import IMPLS, make_schedule, prefill_flops_fraction

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results" / "token_pruning.json"
QUICK_RESULTS = HERE / "results" / "token_pruning_quick.json"
BENCHMARKS_MD = HERE.parent / "BENCHMARKS.md"
# HiDrop's speed-up targets on CPU (jaxexit issue 6): t_full / t_hidrop.
TARGETS = {"train_step": 1.7, "prefill": 2.0}
KINDS = tuple(TARGETS)
# (timing_batch, timing_warmup, timing_repeats) of a full / quick run.
FULL = dict(timing_batch=32, timing_warmup=2, timing_repeats=9)
QUICK = dict(timing_batch=8, timing_warmup=1, timing_repeats=3)


def timing_batch(cfg: configs.Config) -> run.Batch:
  """`cfg.timing_batch` rendered test-split prompts (host arrays)."""
  cfg = dataclasses.replace(cfg, test_examples=cfg.timing_batch)
  return run.prompt_batch(run.load_split(cfg, "shapes", "test", None))


def measure(cfg: configs.Config, *, impl: str, log=print) -> list[dict]:
  """Counts and times every method of `cfg` against the full model.

  Args:
    cfg: the model and the timing batch / rounds (`timing_*` fields).
    impl: "xla" or "pallas" (`jaxexit.pruning.IMPLS`).
    log: progress printer.

  Returns:
    One record per (method, schedule), the full model first (see the
    module docstring).
  """
  load = [os.getloadavg()[0]]
  model = run.init_model(cfg)
  batch = timing_batch(cfg)
  text_len = batch["prefix"].shape[1] + batch["suffix"].shape[1]
  num_layers = cfg.model.text.num_layers
  schedules = {
    f"{m}/{s}": make_schedule(m, s, num_layers, cfg.num_vision)
    for m in configs.METHODS
    for s in cfg.schedule_names(m)
  }
  device_batch = jax.tree.map(jnp.asarray, batch)
  # Counted on the XLA path whatever `impl` is timed (the same maths): XLA
  # sees neither into a Pallas custom call nor past one trip of the
  # interpret-mode kernels' loops.
  flops = {
    label: xla_flops(*run.make_prefill(model, s, impl="xla"), device_batch)
    for label, s in schedules.items()
  }
  log(
    f"prefill FLOPs counted; timing {len(schedules)} methods at batch "
    f"{cfg.timing_batch} (load {load[0]:.2f})"
  )
  times = evaluate.time_methods(
    cfg, dict.fromkeys(schedules, model), schedules, batch, impl=impl
  )
  load.append(os.getloadavg()[0])
  full = "full/full"
  records = []
  for label, schedule in schedules.items():
    method, name = label.split("/")
    rec = {
      "method": method,
      "schedule": name,
      "keep": list(schedule.keep),
      "avg_vision_tokens": schedule.avg_vision_tokens,
      "decoder_flops_fraction": round(
        prefill_flops_fraction(schedule, text_len, cfg.model.text), 4
      ),
      "e2e_flops_fraction": round(flops[label] / flops[full], 4),
      "prefill_gflops_per_example": round(
        flops[label] / cfg.timing_batch / 1e9, 4
      ),
    }
    for kind in KINDS:
      t, t_full = times[kind][label], times[kind][full]
      rec[f"{kind}_ms"] = round(1e3 * t.median, 2)
      rec[f"{kind}_speedup"] = round(t_full.median / t.median, 3)
      rec[f"{kind}_min_speedup"] = round(t_full.min / t.min, 3)
    if method == "hidrop":
      rec["targets_met"] = {
        kind: rec[f"{kind}_speedup"] >= goal for kind, goal in TARGETS.items()
      }
    rec.update(
      impl=impl,
      batch=cfg.timing_batch,
      text_len=text_len,
      num_vision=cfg.num_vision,
      load_avg_1m=[round(x, 2) for x in load],
    )
    records.append(rec)
  return records


def targets_line(records: list[dict]) -> str:
  """Whether each HiDrop record meets `TARGETS`, in words."""
  parts = []
  for r in records:
    if r["method"] != "hidrop":
      continue
    got = ", ".join(
      f"{kind.replace('_', ' ')} {r[f'{kind}_speedup']:.2f}x "
      f"(≥ {TARGETS[kind]:g}x: "
      f"{'met' if r['targets_met'][kind] else 'NOT met'})"
      for kind in KINDS
    )
    parts.append(f"HiDrop `{r['schedule']}`: {got}")
  return "Targets on CPU: " + "; ".join(parts) + "."


def render(records: list[dict], cfg: configs.Config, *, quick: bool) -> str:
  """The BENCHMARKS.md section: setup, table, targets, load."""
  header = [
    "method",
    "schedule",
    "avg vision tokens/layer",
    "decoder FLOPs",
    "e2e FLOPs",
    "train step ms",
    "speed-up",
    "prefill ms",
    "speed-up",
  ]
  rows = [
    [
      r["method"],
      r["schedule"],
      f"{r['avg_vision_tokens']:.1f}",
      f"{r['decoder_flops_fraction']:.3f}",
      f"{r['e2e_flops_fraction']:.3f}",
      f"{r['train_step_ms']:.1f}",
      f"{r['train_step_speedup']:.2f}x",
      f"{r['prefill_ms']:.1f}",
      f"{r['prefill_speedup']:.2f}x",
    ]
    for r in records
  ]
  m, first = cfg.model, records[0]
  load = "–".join(f"{x:.2f}" for x in first["load_avg_1m"])
  device = jax.devices()[0].platform.upper()
  cpu = platform.processor() or platform.machine()
  return (
    f"LLaVA-style model of `experiments.hidrop` (`configs.BENCHMARK`), "
    f"untrained: "
    f"ViT ({m.vision.num_layers} blocks, width {m.vision.width}, "
    f"{m.vision.image_size} px, patch {m.vision.patch_size} -> "
    f"{cfg.num_vision} vision tokens), Llama decoder "
    f"({m.text.num_layers} layers, d={m.text.d_model}); prompt of "
    f"{first['text_len']} text tokens. Batch {cfg.timing_batch}, fp32, "
    f"impl `{first['impl']}`, {device} ({cpu}, {os.cpu_count()} cores), "
    f"JAX {jax.__version__}; median of {cfg.timing_repeats} round-robin "
    f"rounds after {cfg.timing_warmup} warm-up, training steps and "
    "prefills each timed side by side. Train step = forward, backward, "
    "AdamW; prefill = image tower + decoder to the answer logits; "
    "speed-up = t_full / t_method. Decoder FLOPs = analytic decoder "
    "prefill fraction (`jaxexit.pruning.prefill_flops_fraction`); "
    "e2e FLOPs = "
    "XLA-counted FLOPs of the whole compiled prefill, image tower "
    f"included. Load (1-min average) at start–end: {load}. Command: "
    f"`python benchmarks/token_pruning.py{' --quick' if quick else ''}"
    f"{'' if first['impl'] == 'xla' else ' --impl ' + first['impl']}`."
    f"\n\n{report.markdown_table(header, rows)}\n\n{targets_line(records)}"
  )


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--quick",
    action="store_true",
    help="batch 8, fewer rounds; writes the _quick json "
    "and leaves BENCHMARKS.md alone",
  )
  parser.add_argument("--impl", default="xla", choices=IMPLS)
  parser.add_argument(
    "--out",
    type=pathlib.Path,
    default=None,
    help="JSON records (default benchmarks/results/token_pruning[_quick].json)",
  )
  parser.add_argument(
    "--markdown",
    type=pathlib.Path,
    default=None,
    help="file whose token_pruning section to rewrite "
    "(default BENCHMARKS.md, none with --quick)",
  )
  args = parser.parse_args(argv)
  if args.out is None:
    args.out = QUICK_RESULTS if args.quick else RESULTS
  if args.markdown is None and not args.quick:
    args.markdown = BENCHMARKS_MD
  return args


def main(argv=None, *, base: configs.Config | None = None) -> list[dict]:
  """Runs the benchmark; `base` replaces `configs.BENCHMARK` (tests)."""
  args = parse_args(argv)
  cfg = dataclasses.replace(
    base or configs.BENCHMARK, **(QUICK if args.quick else FULL)
  )
  start = time.perf_counter()
  log = lambda msg: print(
    f"[{time.perf_counter() - start:5.0f} s] {msg}", flush=True
  )
  records = measure(cfg, impl=args.impl, log=log)
  text = render(records, cfg, quick=args.quick)
  print(text)
  report.write_json(args.out, records)
  if args.markdown is not None:
    report.write_section(args.markdown, "token_pruning", text)
  log(f"wrote {args.out}" + (f" and {args.markdown}" if args.markdown else ""))
  return records


if __name__ == "__main__":
  main()
