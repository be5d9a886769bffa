"""python -m experiments.hidrop — HiDrop vs PyramidDrop vs FastV vs full.

Trains one LLaVA-style model per method and schedule from the same
initialisation on the same data order, with the method's vision-token
pruning active during training (as HiDrop does), evaluates exact-match
accuracy per question type on the held-out split, then times the real
training step and the prefill of every method against the full model in
the same run (interleaved rounds, medians after warm-up). Writes into
--out:

  results.json   one record per method/schedule, merged by (dataset,
                 method, schedule) with earlier runs into this --out
  results.md     the table and notes
  tradeoff.png   accuracy and speed-ups vs average vision tokens per layer

Presets and commands: configs.py.
"""

import argparse
import dataclasses
import pathlib
import time

import numpy as np

from experiments import cli
from experiments.cli import comma_choices
from experiments.hidrop import configs, evaluate, paper, plots, run, summary
from experiments.vision_common.probe import Standardizer
from jaxexit import report, results_store
from jaxexit.data import add_data_dir_flag
from jaxexit.pruning import IMPLS, make_schedule, prefill_flops_fraction

# What identifies a record in results.json across invocations into one --out.
RESULT_KEY = ("dataset", "method", "schedule")


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
    prog="python -m experiments.hidrop",
    description=__doc__.splitlines()[0].split(" — ")[1],
  )
  parser.add_argument(
    "--preset", default="cpu", choices=sorted(configs.PRESETS)
  )
  parser.add_argument(
    "--method",
    default=configs.METHODS,
    type=comma_choices("--method", configs.METHODS),
    help="'all' (default) or a comma list; the full "
    "model is always trained as the reference",
  )
  parser.add_argument(
    "--schedule",
    default=None,
    type=comma_choices("--schedule", configs.HIDROP_SCHEDULES),
    help="HiDrop schedule(s), scaled to the model: 'all' "
    "or a comma list (default: the preset's)",
  )
  parser.add_argument(
    "--steps",
    type=int,
    default=None,
    help="training steps of every method (default: the preset's)",
  )
  parser.add_argument("--dataset", default="shapes", choices=configs.DATASETS)
  parser.add_argument("--impl", default="xla", choices=IMPLS)
  parser.add_argument(
    "--model-dir",
    type=pathlib.Path,
    default=None,
    help="Hugging Face LLaVA folder (paper)",
  )
  parser.add_argument(
    "--out",
    type=pathlib.Path,
    default=None,
    help="output folder (default runs/hidrop_<preset>_<dataset>)",
  )
  parser.add_argument("--no-progress", action="store_true")
  add_data_dir_flag(parser)
  cli.add_device_flags(parser)
  args = parser.parse_args(argv)
  if args.out is None:
    args.out = pathlib.Path(f"runs/hidrop_{args.preset}_{args.dataset}")
  return args


def _runs(cfg, methods):
  """[(method, schedule name)], the full model first."""
  methods = ("full",) + tuple(m for m in methods if m != "full")
  return [(m, s) for m in methods for s in cfg.schedule_names(m)]


def _ci_cell(rec: dict, mean_key: str, ci_key: str, name=None) -> str:
  mean, ci = rec[mean_key], rec[ci_key]
  if name is not None:
    mean, ci = mean[name], ci[name]
  lo, hi = ci
  if lo is None:
    return f"{mean:.3f}"
  return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def _speed(rec: dict, kind: str) -> str:
  if f"{kind}_ms" not in rec:
    return "-"
  return f"{rec[f'{kind}_ms']:.1f} ms ({rec[f'{kind}_speedup']:.2f}x)"


def results_markdown(records: list[dict], title: str, notes: str) -> str:
  """results.md: accuracy [CI], per type [CI], verdicts and speed-ups."""
  types = list(records[0]["type_accuracy"])
  head = ["method", "schedule", "vision tokens / layer", "accuracy"]
  head += types + ["compared types", "train step", "prefill", "FLOPs"]
  rows = []
  for r in records:
    rows.append(
      [r["method"], r["schedule"], _cell(r.get("avg_vision_tokens", "-"))]
      + [_ci_cell(r, "accuracy", "accuracy_ci")]
      + [_ci_cell(r, "type_accuracy", "type_accuracy_ci", t) for t in types]
      + [
        _ci_cell(r, "accuracy_compared", "accuracy_compared_ci")
        if r.get("accuracy_compared") is not None
        else "-",
        _speed(r, "train_step"),
        _speed(r, "prefill"),
        _cell(r.get("flops_fraction", "-")),
      ]
    )
  verdicts = [
    [
      r["method"],
      r["schedule"],
      f"{r['vs_full']['diff_mean']:+.4f}",
      "[{:+.4f}, {:+.4f}]".format(*r["vs_full"]["diff_ci"]),
      r["vs_full"]["verdict"] or "not tested (no type learnable)",
    ]
    for r in records
    if r.get("vs_full")
  ]
  return (
    f"# {title}\n\n{report.markdown_table(head, rows)}\n\n"
    "## Within 1 point of the full model? (paired over seeds, on the "
    "compared types; on all types, descriptive, when none is learnable)\n\n"
    + report.markdown_table(
      ["method", "schedule", "method - full", "95 % CI", "verdict"], verdicts
    )
    + f"\n\n{notes}\n"
  )


def _cell(value) -> str:
  if isinstance(value, float):
    return f"{value:.3g}"
  return str(value)


def write_results(
  out: pathlib.Path, records: list[dict], *, title: str, notes: str, extra
) -> None:
  out.mkdir(parents=True, exist_ok=True)
  records = results_store.merge_records(
    out / "results.json", records, RESULT_KEY, extra=extra
  )
  (out / "results.md").write_text(results_markdown(records, title, notes))
  plots.write_tradeoff(out / "tradeoff.png", records, title)


def main(argv=None):
  args = parse_args(argv)
  devices = cli.setup_devices(args)
  # A second run into the same --out is refused before it trains anything.
  with cli.output_dir(args.out):
    _main(args, devices)


def _load(cfg, args, log, progress, prompts):
  """(train VQASet, test VQASet, train batch, test batch); the batches
  carry backbone features in place of images on the feature path.
  `prompts`: `run.prompt_batch` or `paper.LlavaPrompts`."""
  train_vqa = run.load_split(cfg, args.dataset, "train", args.data_dir)
  test_vqa = run.load_split(cfg, args.dataset, "test", args.data_dir)
  log(f"data: {args.dataset}, {len(train_vqa)} train / {len(test_vqa)} test")
  tf = time.perf_counter()
  sets = [
    run.add_features(cfg, prompts(v), split, progress=progress)
    for v, split in ((train_vqa, "train"), (test_vqa, "test"))
  ]
  if cfg.vision != "clip":
    log(
      f"{cfg.vision} {cfg.feature_map} features at {cfg.feature_resolution}"
      f" px: {sets[0]['features'].shape[1:]} per image, "
      f"{time.perf_counter() - tf:.0f} s (cached after the first pass)"
    )
    # Training reads random rows: hold the float16 maps in memory.
    sets = [s | {"features": np.asarray(s["features"])} for s in sets]
    if cfg.standardize_features:
      sets = _standardized(sets)
      log("features standardised per channel (training split statistics)")
  return train_vqa, test_vqa, *sets


def _standardized(sets: list[dict]) -> list[dict]:
  """The [N, h, w, C] feature maps of (train, test) standardised per
  channel with the training split's statistics, as float16."""
  channels = sets[0]["features"].shape[-1]
  std = Standardizer.fit(sets[0]["features"].reshape(-1, channels))
  out = []
  for s in sets:
    f = s["features"]
    z = std(f.reshape(-1, channels)).reshape(f.shape).astype(np.float16)
    out.append(s | {"features": z})
  return out


def _train_all(
  cfg, args, runs, train_set, test_set, types, log, progress, mesh, init
):
  """{label: [per-seed run dict]}, {label: seed-0 model}, {label: sched};
  `init(cfg)` makes each method's initial model."""
  num_layers = cfg.model.text.num_layers
  per_seed, models, schedules = {}, {}, {}
  for seed in cfg.seeds:
    scfg = dataclasses.replace(cfg, seed=seed)
    for method, name in runs:
      label = f"{method}/{name}"
      schedule = make_schedule(method, name, num_layers, cfg.num_vision)
      tr = time.perf_counter()
      model, metrics = run.train_method(
        scfg,
        init(scfg),
        schedule,
        train_set,
        args.out / "train" / f"{label.replace('/', '_')}_seed{seed}",
        impl=args.impl,
        progress=progress,
        mesh=mesh,
      )
      train_s = time.perf_counter() - tr
      right = evaluate.correct(
        scfg, model, schedule, test_set, impl=args.impl, mesh=mesh
      )
      by_type = summary.type_accuracy(right, test_set["qtype"], types)
      loss = metrics.get("loss", float("nan"))
      log(
        f"seed {seed} {label}: accuracy {right.mean():.3f} "
        + " ".join(f"{k} {v:.3f}" for k, v in by_type.items())
        + f", loss {loss:.3f}, trained in {train_s:.0f} s"
      )
      per_seed.setdefault(label, []).append(
        dict(
          seed=seed,
          right=right,
          qtype=test_set["qtype"],
          type_accuracy=by_type,
          final_loss=None if loss != loss else float(loss),
          train_seconds=train_s,
        )
      )
      if seed == cfg.seeds[0]:
        models[label], schedules[label] = model, schedule
  return per_seed, models, schedules


def _main(args, devices: cli.Devices):
  overrides = {"hidrop_schedules": args.schedule} if args.schedule else {}
  if args.steps is not None:
    overrides["steps"] = args.steps
  cfg = configs.get_config(args.preset, **overrides)
  progress = cli.progress(args)
  t0 = time.perf_counter()
  log = lambda msg: print(
    f"[{time.perf_counter() - t0:5.0f} s] {msg}", flush=True
  )
  prompts, init = run.prompt_batch, run.init_model
  if args.preset == "paper":  # memory plan, then the 7B folder
    cfg, prompts, init = paper.prepare(cfg, args, log)
  train_vqa, test_vqa, train_set, test_set = _load(
    cfg, args, log, progress, prompts
  )
  types = tuple(test_vqa.type_names)
  text_len = train_set["prefix"].shape[1] + train_set["suffix"].shape[1]
  runs = _runs(cfg, args.method)
  per_seed, models, schedules = _train_all(
    cfg,
    args,
    runs,
    train_set,
    test_set,
    types,
    log,
    progress,
    devices.mesh,
    init,
  )
  constant, _ = summary.constant_record(train_set, test_set, types)
  answers = {t: _num_answers(cfg, args.dataset, t) for t in types}
  chance = summary.chance_levels(answers, constant["type_accuracy"])
  learn = summary.learnable_types(per_seed["full/full"], test_set, chance)
  compared = tuple(i for i, t in enumerate(types) if learn[t]["learnable"])
  log(
    "learnable (full model's CI above chance): "
    + ", ".join(f"{t} {v['learnable']}" for t, v in learn.items())
  )
  idx = np.arange(cfg.timing_batch) % len(test_set["answer"])
  times = evaluate.time_methods(
    cfg, models, schedules, run.take(test_set, idx), impl=args.impl
  )
  records = []
  full = "full/full"
  full_comp = full_acc = None
  for label, seed_runs in per_seed.items():
    method, name = label.split("/")
    schedule = schedules[label]
    rec = {"method": method, "schedule": name}
    rec |= summary.method_record(seed_runs, types, compared)
    if label == full:
      full_comp = rec["accuracy_compared_per_seed"]
      full_acc = rec["accuracy_per_seed"]
    elif compared and len(cfg.seeds) >= 2:
      rec["vs_full"] = summary.non_inferiority(
        rec["accuracy_compared_per_seed"], full_comp
      )
    elif len(cfg.seeds) >= 2:
      rec["vs_full"] = summary.untested(rec["accuracy_per_seed"], full_acc)
    rec |= {
      "keep": list(schedule.keep),
      "avg_vision_tokens": schedule.avg_vision_tokens,
      "flops_fraction": prefill_flops_fraction(
        schedule, text_len, cfg.model.text
      ),
    }
    for kind in ("train_step", "prefill"):
      t = times[kind]
      rec[f"{kind}_ms"] = 1e3 * t[label].median
      rec[f"full_{kind}_ms"] = 1e3 * t[full].median
      rec[f"{kind}_speedup"] = t[full].median / t[label].median
    records.append(rec)
  records.append(constant)
  elapsed = time.perf_counter() - t0
  for rec in records:
    rec.update(
      dataset=args.dataset,
      num_test=len(test_vqa),
      impl=args.impl,
      vision=cfg.vision,
      wall_seconds=elapsed,
    )
  if devices.main:
    write_results(
      args.out,
      records,
      notes=_notes(cfg, args, train_vqa, test_vqa, text_len, elapsed),
      title=f"HiDrop and baselines, `{args.dataset}` (preset `{args.preset}`)",
      extra={"learnability": learn, "preset": args.preset},
    )
  log(f"wrote {args.out}/results.json, results.md, tradeoff.png")


def _num_answers(cfg, dataset: str, qtype: str) -> int:
  if dataset == "shapes":
    return len(cfg.shapes.answers(qtype))
  return 10  # CIFAR-10's one question type: the class.


def _notes(cfg, args, train_vqa, test_vqa, text_len, elapsed) -> str:
  m = cfg.model
  if cfg.vision == "clip":
    vision = (
      f"CLIP-style ViT trained from scratch ({m.vision.num_layers} blocks, "
      f"width {m.vision.width}, {m.vision.image_size} px, patch "
      f"{m.vision.patch_size})"
    )
  else:
    vision = (
      f"frozen ImageNet EfficientNet-Lite0 `{cfg.feature_map}` map at "
      f"{cfg.feature_resolution} px ({m.grid} x {m.grid} x "
      f"{m.feature_dim}, cached once per split), learned position table"
    )
  return (
    f"Model: LLaVA-style: {vision} -> {cfg.num_vision} vision tokens, "
    f"2-layer GELU projector, Llama decoder ({m.text.num_layers} layers, "
    f"d={m.text.d_model}, {m.text.num_heads} heads). Each method trained "
    f"{cfg.steps} steps at batch {cfg.batch_size} (AdamW, lr "
    f"{cfg.learning_rate:g}, warmup + cosine) with its pruning active, "
    f"seeds {list(cfg.seeds)} (seed = initialisation and data order, "
    f"shared by the methods); {len(train_vqa)} training examples of "
    f"`{args.dataset}`, accuracy = exact match of the argmax answer word "
    f"on {len(test_vqa)} held-out examples. Brackets: 95 % t intervals "
    f"over seeds (constant row: Wilson over test examples). Compared "
    f"types: those the full model learns (t interval above chance). "
    f"Verdict: paired t interval of (method - full) over seeds on the "
    f"compared types, non-inferiority margin {summary.MARGIN:g} "
    f"(`experiments/hidrop/summary.py`). Prompt: <bos>, {cfg.num_vision} "
    f"image tokens, question, <answer> (text length {text_len}). "
    f"Speed-ups: training step (forward, backward, AdamW) and prefill "
    f"(vision side + decoder up to the answer logits) at batch "
    f"{cfg.timing_batch}, seed-{cfg.seeds[0]} models, all methods timed "
    f"interleaved in this run (median of {cfg.timing_repeats} rounds "
    f"after {cfg.timing_warmup} warm-up), impl `{args.impl}`. "
    f"flops_fraction: analytic decoder prefill FLOPs over the full "
    f"model's (`jaxexit.pruning.prefill_flops_fraction`). Total wall time "
    f"{elapsed:.0f} s."
  )


if __name__ == "__main__":
  main()
