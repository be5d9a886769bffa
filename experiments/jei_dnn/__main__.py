"""python -m experiments.jei_dnn — JEI-DNN on a frozen EfficientNet-Lite.

Caches the frozen ImageNet EfficientNet-Lite's pooled stage features and
head features of every CIFAR-10 split once (stage 1), fits the final
exit's linear probe (stage 2), trains JEI-DNN's inference modules and gates
for every γ and seed on the cached features (stage 3), scores them against
max-softmax thresholds on the same IMs, each fixed exit, the full model and
the majority class (stage 4), and times the operating points end to end,
backbone included (stage 5). Writes into --out:

  runs.json      every seed's records (a rerun skips finished seeds)
  results.json   {"records": one per point: means, `*_ci` 95 % t intervals
                 over seeds, `seeds`; "verdicts"; "timing"}
  results.md     the tables, the verdicts, the paper's numbers
  curve.png      accuracy vs FLOPs with intervals
  log.txt        this run's progress lines

Presets and commands: configs.py.
"""

import argparse
import pathlib
import time

import numpy as np

from experiments import cli
from experiments.jei_dnn import backbone, configs, evaluate, notes, run, timing
from experiments.vision_common import seeds, write_results
from experiments.vision_common.features import split_features
from experiments.vision_common.splits import load_splits
from jaxexit import checks, report, results_store
from jaxexit.data import add_data_dir_flag
from jaxexit.methods import jei_dnn

RUN_KEY = ("method", "budget_or_threshold", "seed")


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
    "--gammas", type=str, default=None, help="comma list of γ"
  )
  parser.add_argument(
    "--seeds", type=str, default=None, help="comma list of training seeds"
  )
  parser.add_argument("--no-progress", action="store_true")
  add_data_dir_flag(parser)
  cli.add_device_flags(parser)
  args = parser.parse_args(argv)
  if args.out is None:
    args.out = pathlib.Path(f"runs/jei_dnn_{args.preset}")
  args.gammas = None if args.gammas is None else _gammas(args.gammas)
  args.seeds = None if args.seeds is None else cli.seed_list(args.seeds)
  return args


class Stages:
  """Prints each stage's wall time to the terminal and `log.txt`."""

  def __init__(self, log: pathlib.Path):
    self.log, self.t0 = cli.Log(log), time.perf_counter()
    self.t = self.t0

  def done(self, name: str) -> None:
    now = time.perf_counter()
    self.log(f"== {name} done in {now - self.t:.0f} s")
    self.t = now

  @property
  def total(self) -> float:
    return time.perf_counter() - self.t0


def main(argv=None):
  args = parse_args(argv)
  devices = cli.setup_devices(args)
  # A second run into the same --out is refused before it trains anything.
  with cli.output_dir(args.out):
    _main(args, devices)


def _config(args) -> configs.Config:
  overrides = {}
  if args.gammas is not None:
    overrides["gammas"] = args.gammas
    base = configs.PRESETS[args.preset].default_gamma
    if base not in args.gammas:
      overrides["default_gamma"] = args.gammas[len(args.gammas) // 2]
  if args.seeds is not None:
    overrides["seeds"] = args.seeds
  return configs.get_config(args.preset, **overrides)


def _majority(test_labels: np.ndarray, cfg) -> dict:
  share = np.bincount(test_labels).max() / len(test_labels)
  return {
    "method": "majority",
    "budget_or_threshold": "constant",
    "accuracy": float(share),
    "avg_flops": 0.0,
    "flops_fraction": 0.0,
    "ece": None,
    "realised_speedup": None,
    "seeds": list(cfg.seeds),
  }


def _expected_methods(cfg) -> set[str]:
  names = {"full", "fixed_exit", "max_softmax"}
  for counts in cfg.weight_counts:
    names.update(configs.method_names(counts))
  return names


def _train_and_score(cfg, args, feats, flops, stages, main: bool):
  """Per-seed records (runs.json, written by the main process); a seed
  whose records are all there is not scored again (its heads come back
  from their checkpoints)."""
  out, progress = args.out, cli.progress(args)
  done = results_store.read_records(out / "runs.json")
  costs = jei_dnn.exit_costs(flops)
  heads = {}
  for seed in cfg.seeds:
    warm, trained = run.train_seed(
      cfg, seed, feats, costs, out / "heads" / f"seed{seed}", progress
    )
    heads[seed] = trained[cfg.weight_counts[0]]
    have = {r["method"] for r in done if r["seed"] == seed}
    if not _expected_methods(cfg) <= have:
      recs = evaluate.seed_records(cfg, seed, feats, flops, warm, trained)
      done = (
        results_store.merge_records(out / "runs.json", recs, RUN_KEY)
        if main
        else done + recs
      )
    stages.done(f"seed {seed}")
  return [r for r in done if r["seed"] in cfg.seeds], heads


def _time(cfg, inputs, heads, summary, per_seed, test_images):
  """Timing rows of the headline's default-γ point and its same-IM
  max-softmax baseline (the first seed's heads and thresholds)."""
  seed, gamma = cfg.seeds[0], cfg.default_gamma
  jei_name, soft_name = configs.method_names(cfg.weight_counts[0])
  model = backbone.load_model(cfg.variant, inputs, heads[seed][gamma])
  timer = timing.Timer(cfg, model, test_images)
  points = {(r["method"], r["budget_or_threshold"]): r for r in summary}
  pairs = [(points[(jei_name, gamma)], timer.jei(heads[seed][gamma]))]
  soft = next(
    r
    for r in per_seed
    if r["method"] == soft_name
    and r["budget_or_threshold"] == gamma
    and r["seed"] == seed
  )
  timed = timer.max_softmax(heads[seed][gamma], soft["thresholds"])
  pairs.append((points[(soft_name, gamma)], timed))
  return timing.speed_rows(pairs)


def _timed(summary: list[dict], speed: list[dict]) -> list[dict]:
  """The summary record of each timing row."""
  points = {(r["method"], r["budget_or_threshold"]): r for r in summary}
  return [points[(row["method"], row["budget_or_threshold"])] for row in speed]


def _main(args, devices: cli.Devices):
  cfg = _config(args)
  out = args.out
  stages = Stages(out / "log.txt")
  splits = load_splits(cfg, args.data_dir)
  stages.done(
    f"data ({len(splits.train)} train, {len(splits.val)} val, "
    f"{len(splits.test)} test)"
  )
  features = split_features(
    splits,
    variant=cfg.variant,
    resolution=cfg.resolution,
    batch_size=cfg.feature_batch,
    progress=cli.progress(args),
  )
  stages.done(
    f"stage 1: EfficientNet-{cfg.variant} features at {cfg.resolution} px"
  )
  labels = {k: getattr(splits, k).labels for k in ("train", "val", "test")}
  inputs = backbone.jei_inputs(features, labels, cfg.probe_steps)
  probe_width, num_gates = inputs.width, backbone.NUM_STAGES
  template = run.new_heads(probe_width, backbone.NUM_CLASSES, num_gates, 0)
  flops = backbone.exit_flops(
    backbone.load_model(cfg.variant, inputs, template), cfg.resolution
  )
  print(
    "normalised exit costs:",
    np.round(jei_dnn.exit_costs(flops), 3).tolist(),
    flush=True,
  )
  stages.done("stage 2: final-exit probe and FLOP count")
  per_seed, heads = _train_and_score(
    cfg, args, inputs.splits, flops, stages, devices.main
  )
  summary = seeds.aggregate_seeds(
    seeds.by_seed(per_seed),
    ci_fields=("accuracy", "flops_fraction", "avg_flops", "ece"),
    mean_fields=("coverage", "coverage_p5", "set_size"),
  ) + [_majority(labels["test"], cfg)]
  claims, verdicts = notes.claims(per_seed, summary, cfg)
  stages.done(f"stages 3-4: {len(cfg.seeds)} seeds x {len(cfg.gammas)} γ")
  speed = _time(cfg, inputs, heads, summary, per_seed, splits.test.images)
  for rec, row in zip(_timed(summary, speed), speed):
    rec["realised_speedup"] = row["realised_speedup_compacted"]
  stages.done("stage 5: end-to-end timing")
  if not devices.main:
    return
  speed_table = report.markdown_table(
    list(speed[0]),
    [
      [f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()]
      for row in speed
    ],
  )
  write_results(
    out,
    summary,
    notes=claims + f"\n## Speed, backbone included (seed {cfg.seeds[0]})\n\n"
    f"`compacted` at batch {cfg.timing_batch} ({cfg.timing_batches} "
    f"batch(es)) and `early_stop` at batch 1 ({cfg.batch1_examples} "
    "examples), each against the plain backbone + probe in the same run "
    "(medians after a warm-up round); theoretical = 1 / flops_fraction.\n\n"
    f"{speed_table}\n\nTotal wall time {stages.total:.0f} s.\n",
    title=(
      f"JEI-DNN on CIFAR-10, frozen EfficientNet-{cfg.variant} at "
      f"{cfg.resolution} px (preset `{args.preset}`)"
    ),
  )
  results_store.merge_records(
    out / "results.json",
    [],
    RUN_KEY[:2],
    extra={"verdicts": verdicts, "timing": speed},
  )
  print(
    f"wrote {out}/results.json, results.md, curve.png ({stages.total:.0f} s)"
  )


if __name__ == "__main__":
  main()
