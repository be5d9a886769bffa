"""python -m experiments.palbert_glue — PALBERT and its baselines on GLUE.

Trains every requested exit method (PALBERT with the paper's shared head and
with per-layer heads, PonderNet, PABEE, DeeBERT, BERxiT, static, full) on
the same pretrained encoder and GLUE task, jointly fine-tuned, for every
seed, with the shared resumable loop. For each seed it chooses the method's
operating point on a held-out part of the training split, scores it on dev,
and (for the first seed) times it against the full model. It then writes,
with 95 % intervals over seeds and verdicts from `jaxexit.stats`:

  results.json   one record per task and method (+ the majority class)
  runs.json      one record per task, method and seed
  results.md     the tables, the paper's numbers beside ours
  pareto.png     dev score vs average layers, every seed's sweep
  log.txt        everything printed

Several invocations into one --out merge (by task, method and seed); a
second concurrent run into it is refused. Presets: configs.py.
"""

import argparse
import dataclasses
import pathlib
import sys
import time

import jax
import numpy as np

from experiments import cli
from experiments.cli import Log
from experiments.palbert_glue import (
  configs,
  models,
  plots,
  run,
  select,
  summary,
  tables,
)
from jaxexit import results_store
from jaxexit.data import TASKS, add_data_dir_flag, glue_task, load_glue
from jaxexit.methods.encoder_exits import METHODS, get_method
from jaxexit.train.progress import format_duration


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
    prog="python -m experiments.palbert_glue",
    description=__doc__.splitlines()[0].split(" — ")[1],
  )
  parser.add_argument(
    "--task",
    default="sst2",
    help=f"GLUE task, or a comma list: {', '.join(TASKS)}",
  )
  parser.add_argument(
    "--method",
    default="all",
    help=f"'all' or a comma list of {', '.join(METHODS)}",
  )
  parser.add_argument(
    "--model",
    default=None,
    help="minilm-l6 (offline, default), albert-base-v2, "
    "roberta-base, or a local Hugging Face folder",
  )
  parser.add_argument(
    "--preset", default="cpu", choices=sorted(configs.PRESETS)
  )
  parser.add_argument(
    "--seeds",
    type=int,
    default=None,
    help="number of seeds (the preset's first N, or 42, 43, ...)",
  )
  parser.add_argument(
    "--prior",
    default=None,
    help="PonderNet prior of palbert*/pondernet: "
    "depth_matched (default) or paper (λ_p = 0.1)",
  )
  parser.add_argument(
    "--max-len",
    type=int,
    default=None,
    help="override the preset's max sequence length",
  )
  parser.add_argument(
    "--epochs",
    type=float,
    default=None,
    help="override the preset's training epochs",
  )
  parser.add_argument(
    "--train-examples",
    type=int,
    default=None,
    help="override the preset's training subset size",
  )
  parser.add_argument(
    "--out", type=pathlib.Path, default=pathlib.Path("runs/palbert_glue")
  )
  parser.add_argument(
    "--force-resume",
    action="store_true",
    help="resume checkpoints whose settings differ",
  )
  parser.add_argument("--no-progress", action="store_true")
  add_data_dir_flag(parser)
  cli.add_device_flags(parser)
  args = parser.parse_args(argv)
  args.tasks = [glue_task(t).name for t in args.task.split(",")]
  names = list(METHODS) if args.method == "all" else args.method.split(",")
  for name in names:
    get_method(name)  # a clear error naming the valid methods
  args.method_names = names
  if args.seeds is not None and args.seeds < 1:
    raise ValueError(f"--seeds must be >= 1; got --seeds={args.seeds}")
  return args


def config(args) -> configs.Config:
  """The preset with the command line's overrides."""
  base = configs.get_config(args.preset)
  overrides = {
    k: v
    for k, v in [
      ("model", args.model),
      ("max_len", args.max_len),
      ("epochs", args.epochs),
      ("max_train_examples", args.train_examples),
      ("prior", args.prior),
    ]
    if v is not None
  }
  if args.max_len is not None:
    # The length buckets follow: every width below max_len, then max_len.
    for name in ("bucket_widths", "train_bucket_widths"):
      widths = [w for w in getattr(base, name) if w < args.max_len]
      overrides[name] = (*widths, args.max_len)
  if args.seeds is not None:
    extra = range(max(base.seeds) + 1, max(base.seeds) + 1 + args.seeds)
    overrides["seeds"] = tuple((list(base.seeds) + list(extra))[: args.seeds])
  return dataclasses.replace(base, **overrides)


def tokenise(tokenizer, task: str, split: str, cfg, data_dir, log):
  """A `run.Split` of `task`/`split` (every example), truncation reported."""
  raw = load_glue(task, split, data_dir=data_dir)
  enc = tokenizer.encode_batch(raw.texts_a, raw.texts_b, max_len=cfg.max_len)
  if enc.num_truncated:
    log(
      f"{task}/{split}: {enc.num_truncated} of {len(raw)} examples "
      f"truncated to {cfg.max_len} tokens"
    )
  return run.Split(
    enc.input_ids,
    enc.token_type_ids,
    enc.attention_mask,
    np.asarray(raw.labels),
  )


def splits(tokenizer, task, cfg, data_dir, log):
  """(train, held-out, dev): held-out and train are disjoint parts of the
  training split (a fixed permutation, the same for every seed)."""
  full_train = tokenise(tokenizer, task, "train", cfg, data_dir, log)
  perm = np.random.default_rng(0).permutation(len(full_train))
  heldout_n = min(cfg.heldout_examples, len(full_train) // 5)
  rest = perm[heldout_n:]
  if cfg.max_train_examples is not None:
    rest = rest[: cfg.max_train_examples]
  dev = tokenise(
    tokenizer,
    task,
    "dev_matched" if task == "mnli" else "dev",
    cfg,
    data_dir,
    log,
  )
  if cfg.max_eval_examples is not None:
    dev = dev.subset(np.arange(min(cfg.max_eval_examples, len(dev))))
  return full_train.subset(rest), full_train.subset(perm[:heldout_n]), dev


def run_seed(
  task, method, seed, encoder, pooling, data, cfg, args, timed: bool, mesh
) -> dict:
  """Trains, selects on held-out, scores on dev: one runs.json record."""
  train_split, heldout, dev = data
  clock = time.monotonic()
  heads_cfg = dataclasses.replace(
    method.heads(glue_task(task).num_labels), pooling=pooling
  )
  model, metrics = run.train_method(
    encoder,
    heads_cfg,
    method,
    train_split,
    cfg,
    seed,
    args.out / "train" / task / method.name / f"seed{seed}",
    cli.progress(args),
    fingerprint=run.fingerprint(cfg, heads_cfg, method, train_split, task),
    force_resume=args.force_resume,
    mesh=mesh,
  )
  key = jax.random.key(seed)
  seconds = {"train": time.monotonic() - clock}
  clock = time.monotonic()
  held_points = run.sweep(
    method,
    run.per_layer_outputs(model, heldout, cfg, mesh),
    heldout.labels,
    task,
    key,
  )
  chosen, degenerate = select.choose(
    held_points, tolerance=cfg.tolerance, fixed_depth=method.fixed_depth
  )
  dev_out = run.per_layer_outputs(model, dev, cfg, mesh)
  dev_points = run.sweep(method, dev_out, dev.labels, task, key)
  at = next(p for p in dev_points if p["param"] == chosen["param"])
  seconds["evaluate"] = time.monotonic() - clock
  record = {
    "task": task,
    "method": method.name,
    "seed": seed,
    "param": chosen["param"],
    "degenerate": degenerate,
    "heldout_score": chosen["score"],
    "score": at["score"],
    "avg_layers": at["avg_layers"],
    "avg_layers_std_over_examples": at["avg_layers_std_over_examples"],
    "exit_histogram": at["exit_histogram"],
    "per_layer_scores": run.per_layer_scores(dev_out, dev.labels, task),
    "halting_spread": run.halting_spread(dev_out),
    "dev_correct": "".join(map(str, at["correct"].tolist())),
    "train_loss": metrics.get("loss"),
    "heldout_sweep": [_point(p) for p in held_points],
    "dev_sweep": [_point(p) for p in dev_points],
    "realised_speedup": None,
    "realised_speedup_batch1": None,
  }
  if timed:
    clock = time.monotonic()
    fast, single = run.speed(model, method, chosen["param"], dev, cfg, key)
    seconds["time_speed"] = time.monotonic() - clock
    record.update(
      realised_speedup=round(fast.realised_speedup, 3),
      realised_speedup_batch1=round(single.realised_speedup, 3),
      timing_theoretical_speedup=round(fast.theoretical_speedup, 3),
    )
  record["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
  return record


def _point(p: dict) -> dict:
  return {
    k: p[k]
    for k in (
      "param",
      "score",
      "avg_layers",
      "avg_layers_std_over_examples",
      "exit_histogram",
    )
  }


def write_summary(out: pathlib.Path, args, cfg, num_layers: int) -> list:
  """Rebuilds results.json / results.md / pareto.png from runs.json."""
  runs_all = results_store.read_records(out / "runs.json")
  by_key = {}
  for r in runs_all:
    by_key.setdefault((r["task"], r["method"]), []).append(r)
  records = []
  for (task, method), runs in by_key.items():
    if method == "majority":
      records.append(runs[0]["record"])
      continue
    metric = "+".join(glue_task(task).selection)
    records.append(
      summary.method_record(
        task, metric, method, num_layers, sorted(runs, key=lambda r: r["seed"])
      )
    )
  summary.add_verdicts(
    records, {k: v for k, v in by_key.items() if k[1] != "majority"}
  )
  results_store.write_json_atomic(out / "results.json", records)
  (out / "results.md").write_text(tables.markdown(records, runs_all, args, cfg))
  plots.pareto(
    runs_all,
    records,
    out / "pareto.png",
    title=f"GLUE dev, {cfg.model}, {len(cfg.seeds)} seeds",
  )
  return records


def main(argv=None):
  args = parse_args(argv)
  devices = cli.setup_devices(args)
  cfg = config(args)
  start = time.monotonic()
  with cli.output_dir(args.out) as out:
    log = Log(out / "log.txt")
    log(
      f"$ python -m experiments.palbert_glue {' '.join(argv or sys.argv[1:])}"
    )
    encoder, tokenizer, pooling = models.load(cfg.model)
    positions = encoder.cfg.max_position_embeddings
    if cfg.max_len > positions:
      log(
        f"max_len={cfg.max_len} exceeds the model's {positions} positions; "
        f"inputs are truncated to {positions} tokens"
      )
      cfg = dataclasses.replace(
        cfg,
        max_len=positions,
        bucket_widths=tuple(min(w, positions) for w in cfg.bucket_widths),
        train_bucket_widths=tuple(
          min(w, positions) for w in cfg.train_bucket_widths
        ),
      )
    methods = [get_method(n, prior=cfg.prior) for n in args.method_names]
    log(
      f"preset {args.preset}: {cfg.model} ({encoder.cfg.num_layers} "
      f"layers, exits pool '{pooling}'), prior {cfg.prior}, seeds "
      f"{list(cfg.seeds)}, out {out}"
    )
    jobs = [(t, m, s) for t in args.tasks for m in methods for s in cfg.seeds]
    done = 0
    for task in args.tasks:
      data = splits(tokenizer, task, cfg, args.data_dir, log)
      log(
        f"{task}: train {len(data[0])}, held-out {len(data[1])}, dev "
        f"{len(data[2])} examples; {run.num_steps(cfg, len(data[0]))} "
        "steps per stage"
      )
      majority = summary.majority_record(
        task,
        "+".join(glue_task(task).selection),
        data[0].labels,
        data[2].labels,
      )
      if devices.main:
        results_store.merge_records(
          out / "runs.json",
          [
            {
              "task": task,
              "method": "majority",
              "seed": None,
              "record": majority,
            }
          ],
        )
      for method in methods:
        for i, seed in enumerate(cfg.seeds):
          elapsed = time.monotonic() - start
          eta = elapsed / done * (len(jobs) - done) if done else float("nan")
          log(
            f"== [{done + 1}/{len(jobs)}] {task} / {method.name} / seed "
            f"{seed} ({format_duration(elapsed)} elapsed, "
            f"ETA {format_duration(eta)})"
          )
          record = run_seed(
            task,
            method,
            seed,
            encoder,
            pooling,
            data,
            cfg,
            args,
            timed=i < cfg.timing_seeds,
            mesh=devices.mesh,
          )
          log(
            f"   op. point {record['param']} (held-out "
            f"{100 * record['heldout_score']:.1f}): dev "
            f"{100 * record['score']:.1f} at {record['avg_layers']:.2f} "
            f"layers (std {record['avg_layers_std_over_examples']:.2f}"
            f"{', DEGENERATE' if record['degenerate'] else ''}); "
            + ", ".join(f"{k} {v:.0f}s" for k, v in record["seconds"].items())
          )
          if devices.main:
            results_store.merge_records(out / "runs.json", [record])
          done += 1
        if devices.main:
          write_summary(out, args, cfg, encoder.cfg.num_layers)
    if not devices.main:
      return
    records = write_summary(out, args, cfg, encoder.cfg.num_layers)
    log(tables.headline(records))
    log(
      f"done in {format_duration(time.monotonic() - start)}; wrote "
      f"{out / 'results.json'}, {out / 'results.md'}, {out / 'pareto.png'}"
      f" (and runs.json, log.txt)"
    )


if __name__ == "__main__":
  main()
