"""python -m experiments.dynamax — DYNAMAX exits for Transformer and Mamba LMs.

Loads (or trains) the backbone, extracts its hidden states at the exits on
GSM8K + CommonsenseQA text, trains each exit classifier kind with the
backbone frozen (CE + KL to the final layer), then decodes TruthfulQA
prompts with early exits for every (classifier, state mode, λ), measuring
cost, consistency with the full model, TruthfulQA ROUGE accuracy and
tokens/s against the full model in the same run. Writes into --out:

  results.json   one record per sweep point (+ the full model), merged by
                 (backbone, classifier, state_mode, threshold) with
                 earlier runs into this --out
  results.md     the table, sample answers, notes
  curves.png     consistency / accuracy vs FLOPs, realised vs theoretical

Presets and commands: configs.py.
"""

import argparse
import pathlib
import time

import numpy as np
from flax import nnx

from experiments import cli, memory_check
from experiments.cli import comma_choices
from experiments.dynamax import backbones, configs, evaluate, plots, scale
from jaxexit import report, results_store
from jaxexit.data import add_data_dir_flag, text
from jaxexit.decoding.config import STATE_MODES
from jaxexit.methods import dynamax_train
from jaxexit.methods.dynamax import KINDS, ExitClassifiers

TABLE = (
  "classifier",
  "state_mode",
  "threshold",
  "avg_layers",
  "flops_fraction",
  "consistency",
  "consistency_all",
  "accuracy",
  "tokens_per_s",
  "full_tokens_per_s",
  "realised_speedup",
  "theoretical_speedup",
)
# What identifies a record in results.json across invocations into one --out.
RESULT_KEY = ("backbone", "classifier", "state_mode", "threshold")
# Each backbone class's logical axes (`jaxexit.sharding.FAMILY_AXES`).
FAMILIES = {"LlamaLM": "llama", "MambaLM": "mamba", "Mamba2LM": "mamba2"}


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
    prog="python -m experiments.dynamax",
    description=__doc__.splitlines()[0].split(" — ")[1],
  )
  parser.add_argument(
    "--preset", default="cpu", choices=sorted(configs.PRESETS)
  )
  parser.add_argument(
    "--backbone", default="transformer", choices=configs.BACKBONES
  )
  parser.add_argument(
    "--classifier",
    default=None,
    type=comma_choices("--classifier", KINDS),
    help="'all' or a comma list (default: the preset's)",
  )
  parser.add_argument(
    "--state-mode",
    default=None,
    type=comma_choices("--state-mode", STATE_MODES),
    help="'all' or a comma list (default: the preset's)",
  )
  parser.add_argument(
    "--model-dir",
    type=pathlib.Path,
    default=None,
    help="Hugging Face folder of the backbone (paper)",
  )
  parser.add_argument(
    "--out",
    type=pathlib.Path,
    default=None,
    help="output folder (default runs/dynamax_<preset>_<backbone>)",
  )
  parser.add_argument("--no-progress", action="store_true")
  add_data_dir_flag(parser)
  cli.add_device_flags(parser)
  args = parser.parse_args(argv)
  if args.out is None:
    args.out = pathlib.Path(f"runs/dynamax_{args.preset}_{args.backbone}")
  return args


def train_classifiers(
  cfg, bb, exit_layers, out: pathlib.Path, data_dir, progress
) -> dict:
  """One trained `ExitClassifiers` per kind (`lm_head` needs no training)."""
  rows = backbones.training_rows(
    bb.encode, bb.bos_id, bb.eos_id, cfg.feature_len, data_dir, cfg.seed + 1
  )
  rows = rows[: cfg.feature_rows]
  feats = scale.training_features(
    cfg, bb.model, rows, exit_layers, out, progress, tag=bb.description
  )
  heads = {}
  for kind in cfg.classifiers:
    heads[kind] = ExitClassifiers(
      scale.classifier_config(cfg, kind, len(exit_layers), bb.model.d_model),
      rngs=nnx.Rngs(cfg.seed),
    )
    if kind == "lm_head":  # the shared frozen head: nothing to fit for
      continue  # the max-softmax rule
    _, metrics = dynamax_train.train_exit_classifiers(
      bb.model,
      heads[kind],
      feats,
      optim=scale.optim_config(cfg),
      num_steps=cfg.classifier_steps,
      batch_size=cfg.classifier_batch,
      workdir=out / "classifiers" / kind,
      seed=cfg.seed,
      checkpoint_every=max(cfg.classifier_steps // 2, 1),
      progress=progress,
    )
    print(
      f"   {kind}: "
      + ", ".join(f"{k}={v:.3f}" for k, v in sorted(metrics.items())),
      flush=True,
    )
  return heads


def _cell(value) -> str:
  if value is None:
    return "–"
  if isinstance(value, float):
    return f"{value:.3g}"
  return str(value)


def write_results(
  out: pathlib.Path, records, samples, *, title: str, notes: str
) -> None:
  out.mkdir(parents=True, exist_ok=True)
  records = results_store.merge_records(
    out / "results.json", records, RESULT_KEY
  )
  rows = [[_cell(r[f]) for f in TABLE] for r in records]
  sample_md = "\n".join(
    f"- **{label}**: " + " · ".join(repr(t[:80]) for t in texts)
    for label, texts in samples.items()
  )
  (out / "results.md").write_text(
    f"# {title}\n\n{report.markdown_table(TABLE, rows)}\n\n{notes}\n\n"
    f"## First answers per setting\n\n{sample_md}\n"
  )
  plots.write_curves(out / "curves.png", records, title)


def main(argv=None):
  args = parse_args(argv)
  devices = cli.setup_devices(args)
  # A second run into the same --out is refused before it trains anything.
  with cli.output_dir(args.out):
    _main(args, devices)


def _main(args, devices: cli.Devices):
  overrides = {}
  if args.classifier:
    overrides["classifiers"] = args.classifier
  if args.state_mode:
    overrides["state_modes"] = args.state_mode
  cfg = configs.get_config(args.preset, **overrides)
  progress = cli.progress(args)
  out = args.out / args.backbone
  t0 = time.perf_counter()
  spec = getattr(cfg, args.backbone)
  if spec.source == "pretrained":  # a 7B backbone: its plan before loading
    memory_check.check_memory(
      scale.workloads(cfg, args.backbone, args.model_dir),
      memory_check.run_mesh(args),
    )
  bb = backbones.load_backbone(
    args.backbone,
    spec,
    out=args.out,
    data_dir=args.data_dir,
    model_dir=args.model_dir,
    seed=cfg.seed,
    progress=progress,
  )
  exit_layers = cfg.exit_layers(bb.model.num_layers)
  print(
    f"== backbone: {bb.description}; exits after {exit_layers} of "
    f"{bb.model.num_layers} blocks ({time.perf_counter() - t0:.0f} s)",
    flush=True,
  )
  heads = train_classifiers(cfg, bb, exit_layers, out, args.data_dir, progress)
  print(
    f"== exit classifiers trained ({time.perf_counter() - t0:.0f} s)",
    flush=True,
  )
  # Decoding runs on the mesh: backbone sharded by its rules, heads copied.
  family = FAMILIES[type(bb.model).__name__]
  cli.place_model(bb.model, devices.mesh, family)
  for h in heads.values():
    cli.place_model(h, devices.mesh)
  items = text.load_truthfulqa(args.data_dir)
  order = np.random.default_rng(cfg.seed).permutation(len(items))
  items = [items[i] for i in order[: cfg.eval_prompts]]
  records, samples = evaluate.sweep(
    cfg, args.backbone, bb, heads, items, progress
  )
  elapsed = time.perf_counter() - t0
  notes = (
    f"Backbone: {bb.description}. Exits after blocks {exit_layers} of "
    f"{bb.model.num_layers}; max-softmax rule; {len(items)} TruthfulQA "
    f"questions (seeded sample), batch 1, greedy, {cfg.max_new_tokens} new "
    f"tokens. Classifiers trained {cfg.classifier_steps} steps on "
    f"{cfg.feature_rows}x{cfg.feature_len} tokens of GSM8K + CommonsenseQA "
    "text with the backbone frozen (`lm_head` = the shared frozen head, "
    "untrained). Token rates: the first "
    f"{cfg.timing_prompts} prompt(s), early-exit and full model timed "
    f"interleaved in this run (median of {cfg.timing_repeats}). "
    f"Total wall time {elapsed:.0f} s.\n\nDYNAMAX publishes no numbers "
    "(spec §3.1): nothing here is compared with a paper figure."
  )
  if devices.main:
    write_results(
      out,
      records,
      samples,
      notes=notes,
      title=f"DYNAMAX, {args.backbone} backbone (preset `{args.preset}`)",
    )
  print(f"wrote {out}/results.json, results.md, curves.png ({elapsed:.0f} s)")


if __name__ == "__main__":
  main()
