"""python -m experiments.dynamic_perceiver — Dynamic Perceiver on CIFAR-10.

Headline presets (smoke, cpu, paper): Dynamic Perceiver's latent branch on a
frozen ImageNet EfficientNet-Lite0 whose stage maps are cached, against the
same frozen CNN with linear exits on its pooled stage maps and head
(`frozen.py`), over several seeds: thresholds fitted with the budgeted
protocol on a held-out split of train and applied to test, mean and 95 %
t-interval over seeds, a paired matched-FLOPs verdict, and the realised
speed-up of chosen operating points with the live backbone. Joint presets
(joint_*): the end-to-end path with z2x feedback (`joint.py`).

Writes into --out: results.json, results.md, curve.png (and train/, the
resumable checkpoints). Presets and commands: configs.py.
"""

import argparse
import json
import pathlib
import time

import numpy as np

from experiments import cli
from experiments.dynamic_perceiver import configs, frozen, joint, report
from experiments.vision_common.features import split_features
from experiments.vision_common.seeds import aggregate_seeds, seed_curves
from experiments.vision_common.splits import load_splits
from jaxexit import execution, stats
from jaxexit.data import add_data_dir_flag

SPLITS = ("train", "val", "test")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
    prog="python -m experiments.dynamic_perceiver",
    description=__doc__.splitlines()[0].split(" — ")[1],
  )
  presets = sorted({**configs.PRESETS, **configs.JOINT_PRESETS})
  parser.add_argument("--preset", default="cpu", choices=presets)
  parser.add_argument(
    "--out",
    type=pathlib.Path,
    default=None,
    help="default: runs/dynamic_perceiver_<preset>",
  )
  parser.add_argument(
    "--feature-branch",
    default=None,
    choices=configs.FEATURE_BRANCHES,
    help="joint_* presets: override the feature branch",
  )
  parser.add_argument(
    "--seeds",
    type=str,
    default=None,
    help="headline presets: comma list of training seeds (default: the "
    "preset's)",
  )
  parser.add_argument("--no-progress", action="store_true")
  add_data_dir_flag(parser)
  cli.add_device_flags(parser)
  args = parser.parse_args(argv)
  if args.out is None:
    args.out = pathlib.Path(f"runs/dynamic_perceiver_{args.preset}")
  if args.feature_branch and args.preset in configs.PRESETS:
    parser.error("--feature-branch applies to the joint_* presets only")
  if args.seeds is not None:
    if args.preset not in configs.PRESETS:
      parser.error("--seeds applies to the headline presets only")
    args.seeds = cli.seed_list(args.seeds)
  return args


def main(argv=None):
  args = parse_args(argv)
  devices = cli.setup_devices(args)
  # A second run into the same --out is refused before it trains anything.
  with cli.output_dir(args.out):
    if args.preset in configs.JOINT_PRESETS:
      joint.run_joint(args, devices)
    else:
      run_headline(args, devices)


def majority_record(train_labels, test_labels) -> dict:
  """The constant predictor: the most frequent training class."""
  major = np.bincount(train_labels).argmax()
  return {
    "method": "majority",
    "budget_or_threshold": "constant",
    "model": "majority",
    "accuracy": float(np.mean(test_labels == major)),
    "avg_flops": 0.0,
    "flops_fraction": 0.0,
    "ece": None,
    "realised_speedup": None,
  }


def exits_used(records: list[dict], share: float = 0.05) -> dict:
  """Per method, the most exits taking ≥ `share` of test at any budget."""
  out = {}
  for r in records:
    if isinstance(r["budget_or_threshold"], float):
      used = sum(f >= share for f in r["exit_fractions"])
      out[r["method"]] = max(out.get(r["method"], 0), used)
  return out


def run_headline(args, devices: cli.Devices):
  overrides = {} if args.seeds is None else {"seeds": args.seeds}
  cfg = configs.get_config(args.preset, **overrides)
  progress = cli.progress(args)
  start = time.time()
  splits = load_splits(cfg.split_args(), args.data_dir)
  sizes = {n: len(getattr(splits, n)) for n in SPLITS}
  print(f"images {sizes}; features of {cfg.variant} at {cfg.resolution}px")
  feats = split_features(
    splits, variant=cfg.variant, resolution=cfg.resolution, progress=progress
  )
  labels = {n: np.asarray(getattr(splits, n).labels) for n in SPLITS}
  runs = {
    s: [majority_record(labels["train"], labels["test"])] for s in cfg.seeds
  }
  costs, timing, checks = {}, [], {}
  for method in frozen.METHODS:
    for seed in cfg.seeds:
      t0 = time.time()
      model = frozen.train_method(
        method,
        cfg,
        feats["train"],
        labels["train"],
        seed,
        args.out / "train" / f"{method}_seed{seed}",
        progress,
        mesh=devices.mesh,
      )
      logits = {
        n: frozen.cached_logits(model, method, feats[n], cfg, devices.mesh)
        for n in ("val", "test")
      }
      print(f"== {method} seed {seed}: {time.time() - t0:.0f} s", flush=True)
      if method not in costs:
        live = frozen.live_model(method, model, cfg, seed)
        stack, params = live.exit_stack()
        x = frozen.live_inputs(splits.test.images[:8], cfg)
        fl = execution.exit_flops(stack, params, live.init_carry(x))
        costs[method] = (np.asarray(fl.cumulative), float(fl.full))
        checks["cnn_macs_analytic"] = sum(
          live.cnn.flops_per_stage(cfg.resolution)
        )
        checks[method] = float(
          np.abs(np.asarray(live(x)) - logits["test"][:8]).max()
        )
      recs = frozen.evaluate(method, cfg, logits, labels, *costs[method])
      runs[seed] += recs
      if seed == cfg.seeds[0]:
        t0 = time.time()
        targets = frozen.timing_targets(recs, method, cfg.timing_points)
        timing += frozen.time_points(
          targets, live, splits.test.images, logits["test"], *costs[method], cfg
        )
        print(f"== {method}: timed in {time.time() - t0:.0f} s", flush=True)
  records = aggregate_seeds(runs)
  extra = summarise(cfg, runs, records, costs, checks, sizes)
  extra.update(
    title=f"Dynamic Perceiver (frozen Lite0, {cfg.resolution}px) vs linear "
    f"exits, CIFAR-10 ({args.preset})",
    timing=timing,
    timing_seed=cfg.seeds[0],
    wall_seconds=round(time.time() - start, 1),
  )
  if devices.main:
    report.write(args.out, records, extra, notes(extra))
  print(json.dumps({k: extra[k] for k in ("verdict", "latent_flops")}))
  print(f"wrote {args.out} ({(time.time() - start) / 60:.1f} min)")


def summarise(cfg, runs, records, costs, checks, sizes) -> dict:
  """Verdict, FLOPs split, per-exit accuracies and the collapse check."""
  not_full = lambda r: r["method"] != "full"
  diff = stats.matched_cost_difference(
    seed_curves(runs, "dyn_perceiver", keep=not_full),
    seed_curves(runs, "linear_exits", keep=not_full),
  )
  cnn_full = costs["linear_exits"][1]
  dp_cum, dp_full = costs["dyn_perceiver"]
  per_exit = {
    m: [
      r["accuracy"]
      for r in records
      if r["model"] == m
      and r["method"] == m
      and str(r["budget_or_threshold"]).startswith("exit")
    ]
    for m in frozen.METHODS
  }
  return {
    "verdict": stats.verdict_record(
      diff, paper_effect=cfg.paper_effect, direction=+1
    ),
    "matched_flops_diff": diff.format(scale=100, digits=2),
    "latent_flops": {
      "cnn_full_flops": cnn_full,
      "dyn_perceiver_full_flops": dp_full,
      "latent_fraction_of_cnn": (dp_full - cnn_full) / cnn_full,
      "cnn_macs_analytic": checks.pop("cnn_macs_analytic"),
      "dyn_perceiver_exit_flops": dp_cum.tolist(),
      "linear_exits_exit_flops": costs["linear_exits"][0].tolist(),
    },
    "exit_accuracy": per_exit,
    "exits_used": exits_used(records),
    "live_vs_cached_max_abs_logit": checks,
    "sizes": sizes,
    "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
  }


def notes(extra: dict) -> str:
  v, lf = extra["verdict"], extra["latent_flops"]
  latent = (lf["dyn_perceiver_full_flops"] - lf["cnn_full_flops"]) / 1e6
  acc = extra["exit_accuracy"]
  return (
    "## Verdict\n\nClaim: Dynamic Perceiver's exits reach equal accuracy at "
    "fewer FLOPs than the CNN's own exits. Accuracy gap (dyn_perceiver − "
    "linear_exits) averaged over the FLOPs both Pareto fronts reach, paired "
    f"over seeds: {extra['matched_flops_diff']} points -> **{v['verdict']}** "
    f"(`jaxexit.stats.verdict_record`, paper effect {v['paper_effect']}).\n\n"
    f"Latent branch FLOPs: {lf['latent_fraction_of_cnn'] * 100:.1f} % of "
    f"the CNN's ({latent:.2f}"
    f" of {lf['cnn_full_flops'] / 1e6:.2f} MFLOPs, XLA count).\n\n"
    "Per-exit test accuracy (mean over seeds): dyn_perceiver (y_e3, y_att, "
    f"y_cnn, y_merge) {' / '.join(f'{a:.4f}' for a in acc['dyn_perceiver'])};"
    " linear_exits (pooled0, pooled1, pooled2, head) "
    f"{' / '.join(f'{a:.4f}' for a in acc['linear_exits'])}.\n\n"
    f"Most exits taking ≥ 5 % of test at some budget: {extra['exits_used']}."
    f"\n\nWall time of the run: {extra['wall_seconds'] / 60:.1f} min.\n"
  )


if __name__ == "__main__":
  main()
