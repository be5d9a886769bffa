"""What a DYNAMAX run writes: results.json, results.md, curves.png."""

import pathlib

from experiments.dynamax import plots, summary
from jaxexit import results_store


def write_results(
  out: pathlib.Path,
  key: tuple[str, ...],
  records,
  samples,
  extra: dict,
  *,
  title: str,
  notes: str,
) -> None:
  """results.json (merged by `key`), results.md and curves.png."""
  out.mkdir(parents=True, exist_ok=True)
  records = results_store.merge_records(
    out / "results.json", records, key, extra=extra
  )
  sample_md = "\n".join(
    f"- **{label}**: " + " · ".join(repr(t[:80]) for t in texts)
    for label, texts in samples.items()
  )
  (out / "results.md").write_text(
    f"# {title}\n\n{summary.table(records)}\n\n{notes}\n\n"
    f"## First answers per setting\n\n{sample_md}\n"
  )
  plots.write_curves(out / "curves.png", records, title)


def notes(cfg, bb, exit_layers, items, extra) -> str:
  """The paragraph under the results table."""
  text_ = (
    "the transformer backbone's greedy answers to chat prompts"
    if cfg.feature_text == "answers"
    else "GSM8K + CommonsenseQA text"
  )
  out = (
    f"Backbone: {bb.description}. Exits after blocks {exit_layers} of "
    f"{bb.model.num_layers}. {len(items)} TruthfulQA questions (seeded "
    f"sample), decoded {cfg.decode_batch} at a time, greedy, up to "
    f"{cfg.max_new_tokens} new tokens. Classifiers trained "
    f"{cfg.classifier_steps} steps on {cfg.feature_rows}x{cfg.feature_len} "
    f"tokens of {text_} with the backbone frozen (`lm_head` = the shared "
    "frozen head, untrained, max-softmax rule; `mlp` and `mamba`: their "
    "linear score, rule `learned`). Intervals: 95 % percentile bootstrap "
    "over decode batches; verdicts from jaxexit.stats "
    f"(`experiments.dynamax.summary`). Token rates: the first "
    f"{cfg.timing_prompts} questions, early-exit and exits-disabled runs "
    f"timed interleaved (median of {cfg.timing_repeats}). Wall time "
    f"{extra['wall_s']:.0f} s ({extra['cpu_s']:.0f} s of CPU); 1-minute "
    "load average "
    f"{extra['load_average_start'][0]:.1f} at the start, "
    f"{extra['load_average_end'][0]:.1f} at the end."
  )
  costs = summary.cost_table(extra["head_costs"])
  out += f"\n\nExit pieces in blocks (FLOPs of one position):\n\n{costs}"
  if "teacher" in extra:
    t = extra["teacher"]
    out += (
      "\n\nDistilled backbone vs its teacher on the evaluation prompts "
      f"(bootstrap over questions): ROUGE-L {t['rouge_l']:.3f} "
      f"{t['rouge_l_ci']}, teacher answer tokens reproduced "
      f"{t['tokens']:.3f} {t['tokens_ci']}, exact {t['exact']:.3f}; "
      f"distinct answers {t['distinct_answers']} of {len(items)} "
      f"(teacher {t['teacher_distinct_answers']}); "
      f"teacher ROUGE acc {t['teacher_accuracy']:.3f} "
      f"{t['teacher_accuracy_ci']}; share of prompt ids outside the "
      f"sub-vocabulary {t['prompt_unknown_share']:.4f}."
    )
  for c in extra["mamba_vs_mlp"]:
    v = c["consistency"]
    out += (
      f"\n\nMamba − MLP classifier, {c['state_mode']}, λ={c['threshold']}: "
      f"consistency {v['diff_mean']:+.3f} {v['diff_ci']} ({v['verdict']}), "
      f"FLOPs fraction {c['flops_diff_mean']:+.3f} {c['flops_diff']}."
    )
  return out + (
    "\n\nDYNAMAX publishes no numbers (spec §3.1): nothing here is "
    "compared with a paper figure."
  )
