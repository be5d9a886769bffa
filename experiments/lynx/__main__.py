"""python -m experiments.lynx — LYNX: conformal early exit from reasoning.

Rolls the LM out greedily on probe problems, labels every cue event by
forcing an exit there (`jaxexit.methods.lynx_labels`), and per seed trains
the probe on half of those problems, calibrates the conformal rule on the
other half for every δ, checks the per-event guarantee over random
calibration/test splits, and runs LYNX online (`generate_lynx`: exits
decided inside the decoding loop) on each eval set next to its full trace.
Writes into --out:

  results.json  {"records": one per (eval set, δ): eval, delta, seeds,
                baseline_acc, lynx_acc, baseline_tokens, lynx_tokens,
                savings, exit_rate, premature_exit_rate, premature_exit_ci,
                help, harm, the guarantee over splits, verdicts, and `*_ci`
                intervals; "events", "probes", "cues", "throughput",
                "lm", "config"}
  results.md    the table with the constant and full-trace rows, the
                paper's numbers, cue statistics and throughput
  pareto.png    accuracy vs tokens over δ, the full trace marked
  log.txt       everything printed
  lm/           the synthetic LM's checkpoints (resumed when present)

Presets and commands: configs.py.
"""

import argparse
import dataclasses
import pathlib
import time

import numpy as np

from experiments import cli
from experiments.cli import Log, comma_choices
from experiments.lynx import configs, models, plots, run, summary
from jaxexit import report, results_store
from jaxexit.data import add_data_dir_flag
from jaxexit.methods import lynx_conformal
from jaxexit.train.fingerprint import to_jsonable

PAPER = """\
The paper's numbers (LYNX, arXiv 2512.05325, abstract; DeepSeek-R1-Distill
and larger reasoning models, sampled at T = 0.6, one MATH-trained probe):
GSM8K matches or improves accuracy with 40–65 % fewer tokens; MATH-500 up
to +12 points with 35–60 % fewer; AIME 2024 baseline accuracy with > 50 %
savings; CommonsenseQA (zero-shot transfer) up to 70 % fewer tokens.
"""


def _deltas(value: str) -> tuple[float, ...]:
  try:
    deltas = tuple(float(v) for v in value.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(
      f"--delta takes a number or a comma list; got {value!r}"
    ) from None
  bad = [d for d in deltas if not 0.0 < d < 1.0]
  if bad:
    raise argparse.ArgumentTypeError(f"--delta must lie in (0, 1); got {bad}")
  return deltas


def parse_args(argv=None):
  parser = argparse.ArgumentParser(
    prog="python -m experiments.lynx",
    description=__doc__.splitlines()[0].split(" — ")[1],
  )
  parser.add_argument(
    "--preset", default="cpu", choices=sorted(configs.PRESETS)
  )
  parser.add_argument("--model", default=None, choices=configs.MODELS)
  parser.add_argument(
    "--model-dir",
    type=pathlib.Path,
    default=None,
    help="Hugging Face folder (--model qwen2)",
  )
  parser.add_argument("--train-data", default=None, choices=configs.TRAIN_SETS)
  parser.add_argument(
    "--eval-data",
    default=None,
    type=comma_choices("--eval-data", configs.EVAL_SETS),
    help="'all' or a comma list (default: the preset's)",
  )
  parser.add_argument(
    "--delta", default=None, type=_deltas, help="δ, one value or a comma list"
  )
  parser.add_argument("--seeds", type=int, default=None, help="probe seeds")
  parser.add_argument(
    "--out",
    type=pathlib.Path,
    default=None,
    help="output folder (default runs/lynx_<preset>_<model>)",
  )
  parser.add_argument("--no-progress", action="store_true")
  add_data_dir_flag(parser)
  cli.add_device_flags(parser)
  args = parser.parse_args(argv)
  if args.seeds is not None and args.seeds < 1:
    parser.error(f"--seeds must be >= 1; got {args.seeds}")
  return args


def _config(args) -> configs.Config:
  base = configs.PRESETS[args.preset]
  over = {}
  if args.model and args.model != base.model:
    over["model"] = args.model
    if args.model == "qwen2":  # real models answer real problems
      over["train_data"] = "gsm8k"
      over["eval_data"] = ("gsm8k",)
  if args.train_data:
    over["train_data"] = args.train_data
  if args.eval_data:
    over["eval_data"] = args.eval_data
  if args.delta:
    over["deltas"] = args.delta
  if args.seeds:
    over["seeds"] = tuple(range(args.seeds))
  return configs.get_config(args.preset, **over)


def main(argv=None):
  args = parse_args(argv)
  cfg = _config(args)
  if args.out is None:
    args.out = pathlib.Path(f"runs/lynx_{args.preset}_{cfg.model}")
  devices = cli.setup_devices(args)
  # A second run into the same --out is refused before it trains anything.
  with cli.output_dir(args.out):
    _main(args, cfg, devices)


def _cue_stats(lm, name, ro, events) -> dict:
  real = events.subset(~events.synthetic)
  tokens = int(ro.tokens.sum())
  return {
    "set": name,
    "problems": len(ro.traces),
    "traces_with_cue": events.cue_traces / len(ro.traces),
    "cue_events": int(len(real.labels)),
    "cue_events_per_1k_tokens": 1000.0 * len(real.labels) / max(tokens, 1),
    "mean_trace_tokens": float(ro.tokens.mean()),
    "full_trace_accuracy": float(ro.correct.mean()),
    "forced_exit_correct": float(real.labels.mean())
    if len(real.labels)
    else None,
  }


def _timed(fn):
  fn()  # compile
  t0 = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t0


def throughput(lm, probe, rule, ro, lcfg, slots: int) -> dict:
  """Tokens/s of one static batch of `slots` problems at a time vs
  `slots` rows with refill over the same queue (warm, same run)."""
  q = len(ro.prompts)
  refill, t_refill = _timed(
    lambda: run.run_online(lm, probe, rule, ro, lcfg, slots=slots)
  )

  def static():
    outs = []
    for i in range(0, q, slots):
      idx = list(range(i, min(i + slots, q)))
      pad = idx + [idx[0]] * (slots - len(idx))
      part = dataclasses.replace(
        ro,
        prompts=[ro.prompts[j] for j in pad],
        golds=[ro.golds[j] for j in pad],
        graders=[ro.graders[j] for j in pad],
      )
      o = run.run_online(lm, probe, rule, part, lcfg)
      outs.append(o.out.length[: len(idx)])
    return np.concatenate(outs)

  static_len, t_static = _timed(static)
  tokens = int(refill.out.length.sum())
  return {
    "slots": slots,
    "problems": q,
    "tokens": tokens,
    "static_tokens": int(static_len.sum()),
    "refill_seconds": t_refill,
    "static_seconds": t_static,
    "refill_tokens_per_s": tokens / t_refill,
    "static_tokens_per_s": int(static_len.sum()) / t_static,
    "speedup": t_static / t_refill,
  }


def _main(args, cfg: configs.Config, devices: cli.Devices):
  out = args.out
  log = Log(out / "log.txt")
  t0 = time.perf_counter()
  stamp = lambda: f"[{time.perf_counter() - t0:6.0f} s]"  # noqa: E731
  progress = cli.progress(args)
  lm = models.load_lm(cfg, out=out, model_dir=args.model_dir, progress=progress)
  layers = configs.scaled_layers(lm.model.num_layers)
  log(stamp(), f"LM: {lm.description}; feature layers {layers}")

  probe_set = models.problems_of(
    cfg, cfg.train_data, models.PROBE_STREAM, cfg.probe_problems, args.data_dir
  )
  probe_ro = run.rollout(lm, probe_set, cfg)
  events = run.label_events(lm, probe_ro, layers, cfg, synthetic=True)
  cues = [_cue_stats(lm, f"{cfg.train_data} (probe)", probe_ro, events)]
  log(
    stamp(),
    f"probe rollouts: {len(probe_set)} {cfg.train_data} problems, full-trace "
    f"accuracy {probe_ro.correct.mean():.3f}, {len(events.labels)} events "
    f"({events.synthetic.sum()} synthetic), forced exit right at "
    f"{events.labels.mean():.3f}",
  )
  evals = {}
  for name in cfg.eval_data:
    problems = models.problems_of(
      cfg, name, models.EVAL_STREAM, cfg.eval_problems, args.data_dir
    )
    ro = run.rollout(lm, problems, cfg)
    ev = run.label_events(lm, ro, layers, cfg, synthetic=False)
    evals[name] = (problems, ro, ev)
    cues.append(_cue_stats(lm, name, ro, ev))
    log(
      stamp(),
      f"{name}: {len(problems)} problems, full-trace accuracy "
      f"{ro.correct.mean():.3f}, {ro.tokens.mean():.1f} tokens, "
      f"{cues[-1]['traces_with_cue']:.2f} of traces with a cue",
    )

  lcfg = run.lynx_config(lm, cfg, layers)
  per = {}  # (eval, delta) -> lists over seeds
  probes, mismatches, rule_for_speed = [], 0, None
  for seed in cfg.seeds:
    fit = run.fit_seed(events, len(probe_set), layers, seed)
    probes.append(
      {
        "seed": seed,
        "train_events": fit.train_events,
        "calibration_events": len(fit.y_cal),
        "calibration_positive": float(fit.y_cal.mean()),
        "note": fit.note,
        **{
          k: None if isinstance(v, float) and np.isnan(v) else v
          for k, v in dataclasses.asdict(fit.report).items()
        },
      }
    )
    log(
      stamp(),
      f"seed {seed}: probe val accuracy {fit.report.val_accuracy:.3f}, "
      f"AUC {fit.report.val_auc:.3f} ({fit.train_events} training events)"
      + (f"; {fit.note}" if fit.note else ""),
    )
    for delta in cfg.deltas:
      rule, note = run.calibrated_rule(fit, delta)
      if note:
        log(stamp(), f"seed {seed} δ={delta:g}: {note}")
      rates = (
        lynx_conformal.premature_exit_rates(
          fit.p_cal, fit.y_cal, delta, splits=cfg.splits, seed=seed
        )
        if len(set(fit.y_cal.tolist())) == 2
        else np.full(cfg.splits, np.nan)
      )
      for name, (_, ro, _) in evals.items():
        online = run.run_online(lm, fit.probe, rule, ro, lcfg)
        kept = ~online.out.exited
        for i in np.flatnonzero(kept):
          got = online.out.tokens[i, : online.out.length[i]].tolist()
          mismatches += got != ro.traces[i]
        slot = per.setdefault((name, delta), ([], [], []))
        slot[0].append(online)
        slot[1].append(rates)
        slot[2].append(note)
        if seed == cfg.seeds[0] and delta == max(cfg.deltas):
          rule_for_speed = (fit.probe, rule)
      log(
        stamp(),
        f"seed {seed} δ={delta:g}: "
        + ", ".join(
          f"{n} acc {per[(n, delta)][0][-1].correct.mean():.3f} tokens "
          f"{per[(n, delta)][0][-1].out.length.mean():.1f}"
          for n in evals
        ),
      )
  records = [
    summary.eval_record(
      name, delta, cfg.seeds, evals[name][1], *per[(name, delta)]
    )
    for name in cfg.eval_data
    for delta in cfg.deltas
  ]
  first = cfg.eval_data[0]
  speed = throughput(
    lm,
    *rule_for_speed,
    evals[first][1],
    lcfg,
    min(cfg.slots, cfg.eval_problems),
  )
  log(
    stamp(),
    f"throughput on {first} (δ={max(cfg.deltas):g}): refill "
    f"{speed['refill_tokens_per_s']:.0f} tokens/s vs static "
    f"{speed['static_tokens_per_s']:.0f} ({speed['speedup']:.2f}x wall)",
  )
  constants = {n: summary.constant_accuracy(evals[n][1].golds) for n in evals}
  extra = {
    "lm": lm.description,
    "feature_layers": list(layers),
    "events": {
      "total": int(len(events.labels)),
      "synthetic": int(events.synthetic.sum()),
      "positive": float(events.labels.mean()),
    },
    "probes": probes,
    "cues": cues,
    "throughput": {"eval": first, "delta": max(cfg.deltas), **speed},
    "constant_accuracy": constants,
    "online_replay_mismatches": int(mismatches),
    "wall_seconds": time.perf_counter() - t0,
    "config": to_jsonable(cfg, "config"),
  }
  if not devices.main:
    return
  results_store.write_json_atomic(
    out / "results.json", {"records": records, **extra}
  )
  (out / "results.md").write_text(
    _markdown(args.preset, cfg, lm, records, constants, cues, speed, extra)
  )
  plots.write_pareto(
    out / "pareto.png", records, f"LYNX ({args.preset}): {lm.description}"
  )
  log(stamp(), f"wrote {out}/results.json, results.md, pareto.png")


def _markdown(preset, cfg, lm, records, constants, cues, speed, extra) -> str:
  cue_rows = [
    [
      c["set"],
      c["problems"],
      f"{c['full_trace_accuracy']:.3f}",
      f"{c['mean_trace_tokens']:.1f}",
      f"{c['traces_with_cue']:.2f}",
      c["cue_events"],
      f"{c['cue_events_per_1k_tokens']:.1f}",
      "-"
      if c["forced_exit_correct"] is None
      else f"{c['forced_exit_correct']:.3f}",
    ]
    for c in cues
  ]
  probe_rows = [
    [
      p["seed"],
      p["train_events"],
      p["calibration_events"],
      f"{p['calibration_positive']:.3f}",
      "-" if p["val_accuracy"] is None else f"{p['val_accuracy']:.3f}",
      "-" if p["val_auc"] is None else f"{p['val_auc']:.3f}",
    ]
    for p in extra["probes"]
  ]
  return "\n".join(
    [
      f"# LYNX (preset `{preset}`)",
      "",
      f"LM: {lm.description}. Feature layers {extra['feature_layers']}; "
      f"seeds {list(cfg.seeds)}; greedy decoding, ≤ {cfg.max_reason} "
      f"reasoning tokens, K = {cfg.answer_len} answer tokens. Brackets: "
      "95 % intervals (`experiments/lynx/summary.py`).",
      "",
      summary.results_table(records, constants),
      "",
      "## Cue statistics",
      "",
      report.markdown_table(
        [
          "set",
          "problems",
          "full-trace acc",
          "tokens/trace",
          "traces with a cue",
          "cue events",
          "per 1k tokens",
          "forced exit right",
        ],
        cue_rows,
      ),
      "",
      "## Probes",
      "",
      report.markdown_table(
        [
          "seed",
          "train events",
          "calib. events",
          "calib. positive",
          "val acc",
          "val AUC",
        ],
        probe_rows,
      ),
      "",
      "## Throughput: slot refill vs static batches",
      "",
      f"{speed['problems']} problems, {speed['slots']} slots, δ = "
      f"{extra['throughput']['delta']:g}, seed {cfg.seeds[0]}'s rule, warm: "
      f"refill {speed['refill_tokens_per_s']:.0f} tokens/s "
      f"({speed['refill_seconds']:.2f} s), static batches "
      f"{speed['static_tokens_per_s']:.0f} tokens/s "
      f"({speed['static_seconds']:.2f} s): {speed['speedup']:.2f}x wall. "
      f"Online rows that did not exit and differ from their full trace: "
      f"{extra['online_replay_mismatches']}.",
      "",
      PAPER,
    ]
  )


if __name__ == "__main__":
  main()
