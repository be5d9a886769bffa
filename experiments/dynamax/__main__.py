"""python -m experiments.dynamax — DYNAMAX exits for Transformer and Mamba LMs.

Loads (or trains, or distils from the transformer backbone's answers) the
backbone, extracts its hidden states at the exits on the answer corpus (or
GSM8K + CommonsenseQA text), trains each exit classifier kind with the
backbone frozen (CE + KL to the final layer + the consistency score), then
decodes TruthfulQA prompts with early exits for every (classifier, state
mode, λ), measuring cost, consistency with the full model, TruthfulQA ROUGE
accuracy and tokens/s against the full model in the same run, per
question. Writes into --out/<backbone>:

  results.json   {"records": one per sweep point, the full model and the
                 constant answers, each with its per-question data,
                 intervals and verdicts; merged by RESULT_KEY with earlier
                 runs into this --out; "head_costs", "mamba_vs_mlp",
                 "teacher" (distilled backbone vs its teacher), timings}
  results.md     the table, exit costs, agreement, sample answers, notes
  curves.png     consistency / accuracy vs FLOPs, realised vs theoretical

Presets and commands: configs.py.
"""

import argparse
import dataclasses
import functools
import os
import pathlib
import resource
import time

from flax import nnx

from experiments import cli, memory_check
from experiments.cli import comma_choices
from experiments.dynamax import (
  backbones,
  configs,
  distill,
  evaluate,
  scale,
  summary,
  writeout,
)
from jaxexit.data import add_data_dir_flag
from jaxexit.decoding.config import STATE_MODES
from jaxexit.methods import dynamax_train
from jaxexit.methods.dynamax import KINDS, ExitClassifiers

# What identifies a record in results.json across invocations into one --out.
RESULT_KEY = (
  "backbone",
  "classifier",
  "rule",
  "state_mode",
  "threshold",
  "decode_batch",
)
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
  parser.add_argument(
    "--decode-batch",
    type=int,
    default=None,
    help="questions decoded together (default: the preset's; 1 = every "
    "token exits on its own, B > 1 = CALM's batch rule)",
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
  rows = backbones.feature_rows(bb, cfg.feature_len, data_dir, cfg.seed + 1)
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
  if args.decode_batch is not None:
    overrides["decode_batch"] = args.decode_batch
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
  items, others = evaluate.evaluation_items(cfg, args.data_dir)
  load = functools.partial(
    backbones.load_backbone,
    out=args.out,
    data_dir=args.data_dir,
    model_dir=args.model_dir,
    seed=cfg.seed,
    progress=progress,
  )
  distilled = spec.source == "distilled"
  teacher = bb = None
  if not distilled:
    bb = load(args.backbone, spec)
  if args.backbone == "transformer" or distilled:
    teacher = bb or load("transformer", cfg.transformer)
  extra = {"load_average_start": os.getloadavg()}
  if distilled or cfg.feature_text == "answers":
    if teacher is None:
      raise ValueError(
        "feature_text='answers' needs the transformer backbone as the "
        "teacher of the answer corpus; this preset's mamba backbone is "
        f"{spec.source!r}: use feature_text='lm_texts'"
      )
    questions = distill.corpus_questions(cfg, others, args.data_dir, cfg.seed)
    corpus = distill.cached_answers(
      args.out / "answers" / "corpus.json",
      teacher,
      questions,
      max_new_tokens=cfg.answer_tokens,
      batch=cfg.answer_batch,
      max_prompt=cfg.answer_max_prompt,
      progress=progress,
    )
    print(
      f"== answer corpus: {len(corpus.questions)} questions "
      f"({time.perf_counter() - t0:.0f} s)",
      flush=True,
    )
    if distilled:
      bb, vocab = distill.distilled_backbone(
        spec, teacher, corpus, out / "lm", seed=cfg.seed, progress=progress
      )
      extra["teacher"] = distill.teacher_answers(
        args.out / "answers" / "eval.json", cfg, teacher, items, vocab
      )
    elif cfg.feature_text == "answers":
      docs = corpus.documents(bb.bos_id, bb.eos_id)
      bb = dataclasses.replace(bb, corpus=docs)
  teacher = None  # frees the teacher of a distilled backbone
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
  records, samples, kind_costs = evaluate.sweep(
    cfg, args.backbone, spec, bb, heads, items, progress
  )
  comparisons = summary.summarise(records)
  if "teacher" in extra:
    extra["teacher"].update(
      distill.student_agreement(extra["teacher"], records[0]["per_question"])
    )
  elapsed = time.perf_counter() - t0
  usage = resource.getrusage(resource.RUSAGE_SELF)
  extra.update(
    cpu_s=round(usage.ru_utime + usage.ru_stime, 1),
    head_costs=kind_costs,
    mamba_vs_mlp=comparisons,
    wall_s=round(elapsed, 1),
    load_average_end=os.getloadavg(),
    backbone=bb.description,
    vocab_size=bb.model.vocab_size,
  )
  if devices.main:
    writeout.write_results(
      out,
      RESULT_KEY,
      records,
      samples,
      extra,
      notes=writeout.notes(cfg, bb, exit_layers, items, extra),
      title=f"DYNAMAX, {args.backbone} backbone (preset `{args.preset}`)",
    )
  print(f"wrote {out}/results.json, results.md, curves.png ({elapsed:.0f} s)")


if __name__ == "__main__":
  main()
