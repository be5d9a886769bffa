"""λ sweeps of DYNAMAX exits on TruthfulQA prompts, with the full model beside.

Every prompt is decoded alone (batch 1: per-token exits, no batch-minimum
rule), greedily, for `max_new_tokens` tokens. Per sweep point:

* avg_layers, flops_fraction: over every generated decode step
  (`jaxexit.decoding.cost`, exit heads and catch-up included);
* consistency: share of the full model's answer tokens (up to and including
  its end-of-turn token) that the early-exit run reproduces at the same
  position; consistency_all: the same over all generated tokens (decoding
  does not stop at the end-of-turn token, so this also covers what the model
  writes next: the informative one when answers are a few tokens long);
* accuracy: TruthfulQA's automatic "ROUGE acc" of the answer text (closer
  to a correct than to every incorrect reference; `jaxexit.text_metrics`);
* tokens_per_s vs full_tokens_per_s: the first `timing_prompts` prompts
  decoded by the early-exit run and by the full model, timed interleaved in
  this process (median of `timing_repeats` rounds after one warm-up).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from experiments.dynamax.backbones import Backbone
from experiments.dynamax.configs import Config
from jaxexit.data.text import TruthfulQAItem
from jaxexit.decoding.config import DecodeConfig
from jaxexit.decoding.cost import decode_costs, decode_flops_fraction
from jaxexit.decoding.engine import cache_length, generate
from jaxexit.decoding.full import generate_full
from jaxexit.text_metrics import reference_accuracy
from jaxexit.timing import time_side_by_side
from jaxexit.train.progress import ProgressBar


def encode_prompts(
  bb: Backbone, items: list[TruthfulQAItem]
) -> tuple[np.ndarray, np.ndarray]:
  """[P, T] right-padded prompt ids and [P] lengths."""
  ids = [bb.encode(bb.prompt(item.question)) for item in items]
  lengths = np.array([len(i) for i in ids], np.int32)
  prompts = np.zeros((len(ids), lengths.max()), np.int32)
  for row, seq in zip(prompts, ids):
    row[: len(seq)] = seq
  return prompts, lengths


def _one_by_one(fn, prompts, lengths):
  """Runs `fn` on each prompt alone; stacks the results on the batch axis."""
  outs = [
    fn(prompts[i : i + 1], lengths[i : i + 1]) for i in range(len(prompts))
  ]
  return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *outs)


def answer_span(tokens: np.ndarray, eos_id: int) -> np.ndarray:
  """[P, N] bool: positions up to and including each row's first EOS."""
  is_eos = tokens == eos_id
  before = np.cumsum(is_eos, axis=1) - is_eos == 0
  return before


def answers(bb: Backbone, tokens: np.ndarray) -> list[str]:
  span = answer_span(tokens, bb.eos_id)
  return [
    bb.decode([int(t) for t, keep in zip(row, m) if keep and t != bb.eos_id])
    for row, m in zip(tokens, span)
  ]


def truthful_accuracy(texts: list[str], items: list[TruthfulQAItem]) -> float:
  return float(
    np.mean(
      [
        reference_accuracy(t, i.correct_answers, i.incorrect_answers)
        for t, i in zip(texts, items)
      ]
    )
  )


def sweep(
  cfg: Config,
  backbone_name: str,
  bb: Backbone,
  heads_by_kind: dict,
  items: list[TruthfulQAItem],
  progress=None,
) -> tuple[list, dict]:
  """Records of every (classifier, state mode, λ) and of the full model.

  Returns:
    (records, samples): `samples` maps a point's label to its first
    answers, for the Markdown report.
  """
  model = bb.model
  exit_layers = cfg.exit_layers(model.num_layers)
  prompts, lengths = encode_prompts(bb, items)
  n_new = cfg.max_new_tokens
  max_len = cache_length(prompts.shape[1], n_new)
  full_fn = functools.partial(generate_full, model, max_new_tokens=n_new)
  full_tokens = np.asarray(_one_by_one(full_fn, prompts, lengths))
  span = answer_span(full_tokens, bb.eos_id)
  full_texts = answers(bb, full_tokens)
  timed = prompts[: cfg.timing_prompts], lengths[: cfg.timing_prompts]
  timed_tokens = timed[0].shape[0] * n_new
  timed_full = lambda: _one_by_one(full_fn, *timed)
  full_rate = (
    timed_tokens
    / time_side_by_side(
      {"full": (timed_full, ())}, warmup=1, repeats=cfg.timing_repeats
    )["full"].median
  )
  records = [
    {
      "backbone": backbone_name,
      "classifier": "none",
      "state_mode": "full",
      "threshold": None,
      "avg_layers": float(model.num_layers),
      "flops_fraction": 1.0,
      "consistency": 1.0,
      "consistency_all": 1.0,
      "accuracy": truthful_accuracy(full_texts, items),
      "tokens_per_s": full_rate,
      "full_tokens_per_s": full_rate,
      "realised_speedup": 1.0,
      "theoretical_speedup": 1.0,
    }
  ]
  samples = {"full model": full_texts[:3]}
  points = [
    (k, m, t)
    for k in heads_by_kind
    for m in cfg.state_modes
    for t in cfg.thresholds
  ]
  with ProgressBar(len(points), enabled=progress) as bar:
    for kind in heads_by_kind:
      heads = heads_by_kind[kind]
      costs = decode_costs(
        model, heads, (0, *exit_layers, model.num_layers), max_len
      )
      for mode in cfg.state_modes:
        dcfg = DecodeConfig(
          exit_layers=exit_layers,
          state_mode=mode,
          max_new_tokens=n_new,
          pending=cfg.pending,
        )
        for threshold in cfg.thresholds:
          run = functools.partial(
            generate, model, heads, threshold=float(threshold), config=dcfg
          )
          fn = lambda p, n: run(prompts=p, lengths=n)
          out = _one_by_one(fn, prompts, lengths)
          texts = answers(bb, np.asarray(out.tokens))
          times = time_side_by_side(
            {
              "exit": (lambda: _one_by_one(fn, *timed), ()),
              "full": (timed_full, ()),
            },
            warmup=1,
            repeats=cfg.timing_repeats,
          )
          rate = timed_tokens / times["exit"].median
          full = timed_tokens / times["full"].median
          fraction = decode_flops_fraction(out, costs)
          steps = np.asarray(out.valid)[:, 1:]
          tokens = np.asarray(out.tokens)
          records.append(
            {
              "backbone": backbone_name,
              "classifier": kind,
              "state_mode": mode,
              "threshold": float(threshold),
              "avg_layers": float(
                np.asarray(out.exit_layer)[:, 1:][steps].mean()
              ),
              "flops_fraction": fraction,
              "consistency": float((tokens == full_tokens)[span].mean()),
              "consistency_all": float((tokens == full_tokens).mean()),
              "accuracy": truthful_accuracy(texts, items),
              "tokens_per_s": rate,
              "full_tokens_per_s": full,
              "realised_speedup": rate / full,
              "theoretical_speedup": 1.0 / fraction,
            }
          )
          samples[f"{kind} / {mode} / λ={threshold}"] = texts[:3]
          bar.update(1, {"kind": kind, "mode": mode, "λ": threshold})
  return records, samples
