"""python -m experiments.palbert_glue — PALBERT and its baselines on GLUE.

Trains every requested exit method (PALBERT, PonderNet, PABEE, DeeBERT,
BERxiT, static, full) on the same pretrained encoder and GLUE task with the
shared resumable loop, evaluates each method's exit sweep on dev in
`simulate` (exact paper semantics), and measures the realised speed-up of the
default operating point against the full model in the same run, at batch 32
(`compacted`) and batch 1 (`early_stop`). Writes into --out:

  results.json   one record per task and method (default operating point)
  sweep.json     every point of every method's sweep
  results.md     the same as tables
  pareto.png     score vs average layers, one curve per method

Presets and commands: configs.py.
"""

import argparse
import json
import pathlib

import numpy as np

from experiments.palbert_glue import configs, models, plots, run
from jaxexit import report
from jaxexit.data import TASKS, add_data_dir_flag, glue_task, load_glue
from jaxexit.methods.encoder_exits import METHODS, get_method


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
      prog="python -m experiments.palbert_glue",
      description=__doc__.splitlines()[0].split(" — ")[1])
  parser.add_argument("--task", default="rte",
                      help=f"GLUE task, or a comma list: {', '.join(TASKS)}")
  parser.add_argument("--method", default="all",
                      help=f"'all' or a comma list of {', '.join(METHODS)}")
  parser.add_argument("--model", default=None,
                      help="minilm-l6 (offline, default), albert-base-v2, "
                      "roberta-base, or a local Hugging Face folder")
  parser.add_argument("--preset", default="cpu",
                      choices=sorted(configs.PRESETS))
  parser.add_argument("--max-len", type=int, default=None,
                      help="override the preset's max sequence length")
  parser.add_argument("--epochs", type=float, default=None,
                      help="override the preset's training epochs")
  parser.add_argument("--out", type=pathlib.Path,
                      default=pathlib.Path("runs/palbert_glue"))
  parser.add_argument("--no-progress", action="store_true")
  add_data_dir_flag(parser)
  args = parser.parse_args(argv)
  args.tasks = [glue_task(t).name for t in args.task.split(",")]
  names = list(METHODS) if args.method == "all" else args.method.split(",")
  args.methods = [get_method(n) for n in names]
  return args


def tokenise(tokenizer, task: str, split: str, cfg, data_dir):
  """A `run.Split` of `task`/`split`, reporting truncated examples."""
  raw = load_glue(task, split, data_dir=data_dir)
  enc = tokenizer.encode_batch(raw.texts_a, raw.texts_b, max_len=cfg.max_len)
  limit = (cfg.max_train_examples if split == "train"
           else cfg.max_eval_examples)
  n = len(raw) if limit is None else min(limit, len(raw))
  idx = (np.random.default_rng(cfg.seed).permutation(len(raw))[:n]
         if split == "train" else np.arange(n))
  if enc.num_truncated:
    print(f"{task}/{split}: {enc.num_truncated} of {len(raw)} examples "
          f"truncated to {cfg.max_len} tokens")
  return run.Split(enc.input_ids[idx], enc.token_type_ids[idx],
                   enc.attention_mask[idx], raw.labels[idx])


def write(out: pathlib.Path, records, sweep, args, cfg):
  report.write_json(out / "results.json", records)
  report.write_json(out / "sweep.json", sweep)
  header = ["task", "method", "param", "metric", "score", "avg layers",
            "theoretical", "realised b32", "realised b1"]
  rows = [[r["task"], r["method"], r["param"], r["metric"],
           f'{100 * r["score"]:.1f}', r["avg_layers"],
           f'{r["theoretical_speedup"]:.2f}x',
           f'{r["realised_speedup"]:.2f}x',
           f'{r["realised_speedup_batch1"]:.2f}x'] for r in records]
  sweep_rows = [[r["task"], r["method"], r["param"],
                 f'{100 * r["score"]:.1f}', r["avg_layers"],
                 f'{r["theoretical_speedup"]:.2f}x'] for r in sweep]
  (out / "results.md").write_text(
      f"# PALBERT and baselines on GLUE dev (preset `{args.preset}`, "
      f"model `{cfg.model}`)\n\nDefault operating points; realised speed-ups "
      "measured against the full model in the same run (batch 32: "
      "`compacted`, batch 1: `early_stop`).\n\n"
      + report.markdown_table(header, rows)
      + "\n\n## Sweeps\n\n"
      + report.markdown_table(["task", "method", "param", "score",
                               "avg layers", "theoretical"], sweep_rows)
      + "\n")
  plots.pareto(sweep, out / "pareto.png",
               title=f"GLUE dev ({', '.join(args.tasks)}), {cfg.model}")


def main(argv=None):
  args = parse_args(argv)
  overrides = {k: v for k, v in [("model", args.model),
                                  ("max_len", args.max_len),
                                  ("epochs", args.epochs)] if v is not None}
  cfg = configs.get_config(args.preset, **overrides)
  encoder, tokenizer = models.load(cfg.model)
  positions = encoder.cfg.max_position_embeddings
  if cfg.max_len > positions:
    print(f"max_len={cfg.max_len} exceeds the model's {positions} positions; "
          f"inputs are truncated to {positions} tokens")
    cfg = configs.get_config(args.preset, **{**overrides, "max_len": positions})
  records, sweep = [], []
  for task in args.tasks:
    spec = glue_task(task)
    train_split = tokenise(tokenizer, task, "train", cfg, args.data_dir)
    dev_name = "dev_matched" if task == "mnli" else "dev"
    dev = tokenise(tokenizer, task, dev_name, cfg, args.data_dir)
    for method in args.methods:
      print(f"== {task} / {method.name}", flush=True)
      model, metrics = run.train_method(
          encoder, method, train_split, spec.num_labels, cfg,
          args.out / "train" / task / method.name,
          False if args.no_progress else None)
      record, points = run.evaluate_method(model, method, task, dev, cfg)
      print(json.dumps(record), flush=True)
      records.append(record)
      sweep += points
      write(args.out, records, sweep, args, cfg)
  print(f"wrote {args.out}/results.json, sweep.json, results.md, pareto.png")


if __name__ == "__main__":
  main()
