"""Per-seed LYNX outcomes -> results.json records, verdicts and tables.

Every interval and verdict word comes from `jaxexit.stats`:

* accuracy and savings: percentile bootstrap over problems of the
  seed-averaged per-problem outcome (the problem is the sampling unit; the
  seeds' spread is in `*_by_seed`);
* the accuracy difference: paired bootstrap over problems; "matches the
  baseline" is tested as non-inferiority with a 1-point margin
  (`verdict_record` of the shifted difference, paper_effect 0);
* savings: the CI of (savings − 40 %), 40 % being the low end of the
  paper's 40–65 %, through `verdict_record(paper_effect=0)`: reproduced
  when the whole CI lies above 40 %, contradicted when it lies below;
* the claim ("matches or improves accuracy with 40–65 % fewer tokens"):
  reproduced when both are, contradicted when either is, else
  inconclusive;
* rates (exit, premature exit): Wilson over all (seed, problem) decisions.

Definitions (spec §2.7): an exited problem uses its reasoning up to the cue
(dropped), the exit cue and the answer tokens; savings = 1 − mean LYNX
tokens / mean baseline tokens; help / harm = exited problems the baseline
got wrong / right that LYNX gets right / wrong; premature exit = LYNX
exited and its answer is wrong (per problem). The per-event guarantee is
`premature_exit_rates` over random calibration/test splits of the
calibration events.
"""

import numpy as np

from jaxexit import report, stats

MARGIN = 0.01  # "matches or improves accuracy": within one point
PAPER_SAVINGS = 0.40  # the low end of the paper's 40–65 % on GSM8K


def _shift(i: stats.Interval, by: float) -> stats.Interval:
  return stats.Interval(i.mean + by, i.lo + by, i.hi + by, i.n, i.kind)


def claim_verdict(*words: str) -> str:
  """Both parts reproduced -> reproduced; either contradicted ->
  contradicted; else inconclusive."""
  if all(w == "reproduced" for w in words):
    return "reproduced"
  if any(w == "contradicted" for w in words):
    return "contradicted"
  return "inconclusive"


def _ratio_savings(x: np.ndarray) -> float:
  return 1.0 - x[:, 0].mean() / x[:, 1].mean()


def eval_record(name, delta, seeds, ro, onlines, guarantee, notes) -> dict:
  """One (eval set, δ) record over seeds.

  Args:
    name, delta: the eval set and δ.
    seeds: the probe seeds.
    ro: the baseline `Rollouts`.
    onlines: per seed, the `run.Online` result.
    guarantee: per seed, [splits] premature-exit rates of the calibration
      events.
    notes: per seed, the calibration's warning or refusal (or None).
  """
  base_ok = ro.correct.astype(float)
  base_tok = ro.tokens.astype(float)
  ok = np.stack([o.correct for o in onlines]).astype(float)  # [S, Q]
  tok = np.stack([o.out.length for o in onlines]).astype(float)
  exited = np.stack([o.out.exited for o in onlines])
  premature = exited & (ok < 0.5)
  q = len(base_ok)
  acc = stats.bootstrap_interval(ok.mean(0))
  diff = stats.paired_bootstrap_difference(ok.mean(0), base_ok)
  savings = stats.bootstrap_interval(
    np.stack([tok.mean(0), base_tok], axis=1), _ratio_savings
  )
  exit_ci = stats.wilson_interval(int(exited.sum()), exited.size)
  prem_ci = stats.wilson_interval(int(premature.sum()), premature.size)
  help_ = [
    int((e & (o > 0.5) & (base_ok < 0.5)).sum()) for e, o in zip(exited, ok)
  ]
  harm = [
    int((e & (o < 0.5) & (base_ok > 0.5)).sum()) for e, o in zip(exited, ok)
  ]
  rates = np.concatenate(guarantee)
  rates = rates[~np.isnan(rates)]
  exit_at = [
    o.out.exit_event[o.out.exited] / np.maximum(ro.tokens[o.out.exited], 1)
    for o in onlines
  ]
  exit_at = np.concatenate(exit_at) if exit_at else np.zeros(0)
  accuracy_verdict = stats.verdict_record(
    _shift(diff, MARGIN), paper_effect=0.0, direction=+1
  )
  savings_verdict = stats.verdict_record(
    _shift(savings, -PAPER_SAVINGS), paper_effect=0.0, direction=+1
  )
  return {
    "eval": name,
    "delta": delta,
    "seeds": list(seeds),
    "problems": q,
    "baseline_acc": float(base_ok.mean()),
    "baseline_acc_ci": stats.bootstrap_interval(base_ok).as_list(),
    "lynx_acc": acc.mean,
    "lynx_acc_ci": acc.as_list(),
    "lynx_acc_by_seed": ok.mean(1).tolist(),
    "acc_diff": diff.mean,
    "acc_diff_ci": diff.as_list(),
    "baseline_tokens": float(base_tok.mean()),
    "lynx_tokens": float(tok.mean()),
    "lynx_tokens_by_seed": tok.mean(1).tolist(),
    "savings": savings.mean,
    "savings_ci": savings.as_list(),
    "exit_rate": exit_ci.mean,
    "exit_rate_ci": exit_ci.as_list(),
    "exit_position_mean": float(exit_at.mean()) if exit_at.size else None,
    "exit_position_std": float(exit_at.std()) if exit_at.size else None,
    "premature_exit_rate": prem_ci.mean,
    "premature_exit_ci": prem_ci.as_list(),
    "help": float(np.mean(help_)),
    "harm": float(np.mean(harm)),
    "event_premature_mean": float(rates.mean()) if rates.size else None,
    "event_premature_p5": float(np.quantile(rates, 0.05))
    if rates.size
    else None,
    "event_premature_p95": float(np.quantile(rates, 0.95))
    if rates.size
    else None,
    "splits_above_delta": float(np.mean(rates > delta)) if rates.size else None,
    "calibration_notes": [n for n in notes if n],
    "verdict_accuracy": accuracy_verdict,
    "verdict_savings": savings_verdict,
    "verdict": claim_verdict(
      accuracy_verdict["verdict"], savings_verdict["verdict"]
    ),
  }


def constant_accuracy(golds) -> float:
  """Accuracy of always answering the most common gold answer."""
  _, counts = np.unique(np.asarray(golds), return_counts=True)
  return float(counts.max() / len(golds))


def _ci(r, key, scale=100.0, digits=1, ci=None) -> str:
  lo, hi = r[ci or f"{key}_ci"]
  if lo is None:
    return f"{r[key] * scale:.{digits}f}"
  return (
    f"{r[key] * scale:.{digits}f} [{lo * scale:.{digits}f}, "
    f"{hi * scale:.{digits}f}]"
  )


def results_table(records, constants: dict) -> str:
  """The headline table: one row per (eval set, δ), baselines first."""
  header = [
    "eval",
    "δ",
    "accuracy %",
    "Δ acc (pts)",
    "tokens",
    "savings %",
    "exit rate %",
    "premature %/problem",
    "premature/event (mean over splits)",
    "help/harm",
    "accuracy within 1 pt",
    "savings ≥ 40 %",
    "verdict (claim)",
  ]
  rows, seen = [], set()
  for r in records:
    if r["eval"] not in seen:
      seen.add(r["eval"])
      rows.append(
        [r["eval"], "constant", f"{constants[r['eval']] * 100:.1f}"]
        + ["-"] * (len(header) - 3)
      )
      rows.append(
        [r["eval"], "full trace", _ci(r, "baseline_acc"), "-"]
        + [f"{r['baseline_tokens']:.1f}"]
        + ["-"] * (len(header) - 5)
      )
    ev = r["event_premature_mean"]
    rows.append(
      [
        r["eval"],
        f"{r['delta']:g}",
        _ci(r, "lynx_acc"),
        _ci(r, "acc_diff", digits=1),
        f"{r['lynx_tokens']:.1f}",
        _ci(r, "savings"),
        _ci(r, "exit_rate"),
        _ci(r, "premature_exit_rate", ci="premature_exit_ci"),
        "-" if ev is None else f"{ev:.3f} (p95 {r['event_premature_p95']:.3f})",
        f"{r['help']:.1f}/{r['harm']:.1f}",
        r["verdict_accuracy"]["verdict"],
        r["verdict_savings"]["verdict"],
        f"**{r['verdict']}**",
      ]
    )
  return report.markdown_table(header, rows)
