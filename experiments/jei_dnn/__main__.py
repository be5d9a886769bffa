"""python -m experiments.jei_dnn — JEI-DNN on a ViT backbone on CIFAR-10.

Trains a ViT on CIFAR-10 (stage 1), caches its per-block CLS features
(stage 2), trains JEI-DNN's inference modules and gates for every γ on the
frozen backbone (stage 3), and compares them with max-softmax thresholds
on the warmed-up IMs (MSDNet budgeted protocol), each fixed exit and the
full backbone: accuracy, FLOPs, ECE, conformal sets, and realised speed-ups
measured against the full backbone in the same run (compacted at the eval
batch size, early_stop at batch 1). Writes into --out:

  results.json   one record per method point, merged by (method,
                 budget_or_threshold) with earlier runs into this --out
  results.md     the table, the claims tested, the paper's numbers
  curve.png      accuracy vs FLOPs + reliability diagrams

Presets and commands: configs.py.
"""

import argparse
import pathlib
import time

import numpy as np

from experiments.jei_dnn import configs, evaluate, notes, run
from experiments.vision_common import write_results
from experiments.vision_common.splits import load_splits
from jaxexit import checks, results_store
from jaxexit.data import add_data_dir_flag
from jaxexit.methods import jei_dnn


def _gammas(text: str) -> tuple[float, ...]:
  values = []
  for item in text.split(","):
    try:
      gamma = float(item)
    except ValueError:
      raise ValueError(
        f"--gammas must be a comma list of numbers; got gamma={item!r}"
      ) from None
    checks.in_range("gamma", gamma, 0.0, np.inf, high_open=True)
    values.append(gamma)
  return tuple(values)


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
    prog="python -m experiments.jei_dnn",
    description=__doc__.splitlines()[0].split(" — ")[1],
  )
  parser.add_argument(
    "--preset", default="cpu", choices=sorted(configs.PRESETS)
  )
  parser.add_argument(
    "--out",
    type=pathlib.Path,
    default=None,
    help="output folder (default runs/jei_dnn_<preset>)",
  )
  parser.add_argument(
    "--gammas",
    type=str,
    default=None,
    help="comma list of γ overriding the preset's",
  )
  parser.add_argument("--no-progress", action="store_true")
  add_data_dir_flag(parser)
  args = parser.parse_args(argv)
  if args.out is None:
    args.out = pathlib.Path(f"runs/jei_dnn_{args.preset}")
  args.gammas = None if args.gammas is None else _gammas(args.gammas)
  return args


def _stage(name: str, start: float) -> float:
  now = time.perf_counter()
  print(f"== {name} done in {now - start:.0f} s", flush=True)
  return now


def main(argv=None):
  args = parse_args(argv)
  # A second run into the same --out is refused before it trains anything.
  with results_store.lock_output_dir(args.out):
    _main(args)


def _main(args):
  overrides = {} if args.gammas is None else {"gammas": args.gammas}
  cfg = configs.get_config(args.preset, **overrides)
  progress = False if args.no_progress else None
  out = args.out
  t0 = t = time.perf_counter()
  splits = load_splits(cfg, args.data_dir)
  t = _stage(
    f"data ({len(splits.train)} train, {len(splits.val)} val, "
    f"{len(splits.test)} test)",
    t,
  )
  model = run.train_backbone(cfg, splits.train, out / "backbone", progress)
  t = _stage(f"stage 1: backbone ({cfg.steps} steps)", t)
  feats = {
    name: run.cache_features(
      model,
      getattr(splits, name),
      cfg.eval_batch_size,
      out / "features" / f"{name}.npz",
    )
    for name in ("train", "val", "test")
  }
  t = _stage("stage 2: features", t)
  timer = evaluate.Timer(model, run.new_heads(cfg), splits.test.images, cfg)
  flops = timer.flops()
  costs = jei_dnn.exit_costs(flops)
  print("normalised exit costs:", np.round(costs, 3).tolist(), flush=True)
  warm, trained = run.train_heads(cfg, feats, costs, out / "jei", progress)
  t = _stage(f"stage 3: JEI-DNN heads ({len(cfg.gammas)} γ)", t)
  records, reliability = evaluate.evaluate(
    cfg, model, warm, trained, feats, timer, flops
  )
  t = _stage("evaluation and timing", t)
  write_results(
    out,
    records,
    reliability=reliability,
    notes=notes.claims(records)
    + f"\nRealised speed-ups: `compacted` at batch {cfg.eval_batch_size} "
    f"({cfg.timing_batches} test batch(es)) and `early_stop` at batch 1 "
    f"({cfg.batch1_examples} examples), against the full backbone; "
    '"full" is that baseline (1 by definition). Total wall time '
    f"{time.perf_counter() - t0:.0f} s on this machine.\n",
    title=f"JEI-DNN on CIFAR-10, ViT `{cfg.vit}` (preset `{args.preset}`)",
  )
  print(
    f"wrote {out}/results.json, results.md, curve.png "
    f"({time.perf_counter() - t0:.0f} s)"
  )


if __name__ == "__main__":
  main()
