"""λ sweeps of DYNAMAX exits on TruthfulQA prompts, with the full model beside.

Questions are decoded `decode_batch` at a time (consecutive questions of
the seeded sample; a short last batch is filled with copies of its first
row, which decide exactly as that row does), greedily, for
`max_new_tokens` tokens, each row stopping at its EOS. At batch 1 every
token exits on its own; at B > 1 the batch leaves an exit only when every
unfinished row's rule says so (CALM's batch rule). The full model
(`generate_full`) runs on the same batches. Per question, kept in
results.json (`per_question`) so that every interval is computed from
them (`experiments.dynamax.summary`):

* accuracy: TruthfulQA's automatic "ROUGE acc" of the answer text (closer
  to a correct than to every incorrect reference; `jaxexit.text_metrics`);
* consistency: [matched, total], the full model's answer tokens (up to and
  including its EOS) reproduced at the same position;
* flops: [Σ FLOPs ÷ full, steps] over the decode steps
  (`jaxexit.decoding.cost.token_flops`: blocks, exit heads, score heads,
  `propagate` writes and `recompute` catch-up, plus the Mamba classifier's
  state update at every exit it absorbs a token without projecting, which
  `token_flops` leaves out: `classifier_updates`);
* layers: [Σ exit layer, steps].

tokens_per_s vs full_tokens_per_s: the first `timing_prompts` questions
decoded by the early-exit run and by the same engine with exits disabled
(the full model's tokens, and the same stop once every row has emitted its
EOS), in the same batches, timed interleaved (median of `timing_repeats`
rounds after one warm-up); tokens are each run's generated tokens up to
and including each row's EOS.
"""

import functools

import jax.numpy as jnp
import numpy as np

from experiments.dynamax.backbones import Backbone
from experiments.dynamax.configs import RULE_OF_KIND, BackboneSpec, Config
from jaxexit.data.text import TruthfulQAItem, load_truthfulqa
from jaxexit.decoding.config import DecodeConfig
from jaxexit.decoding.cost import DecodeCosts, decode_costs, token_flops
from jaxexit.decoding.engine import DecodeOutput, cache_length, generate
from jaxexit.decoding.exit_heads import LMHeadExits
from jaxexit.decoding.full import generate_full
from jaxexit.text_metrics import reference_accuracy
from jaxexit.timing import time_side_by_side
from jaxexit.train.progress import ProgressBar

# Constant answers for the accuracy baseline rows: TruthfulQA's truthful but
# uninformative answer, and saying nothing.
CONSTANT_ANSWERS = {"no_comment": "I have no comment.", "empty": ""}


def evaluation_items(
  cfg: Config, data_dir
) -> tuple[list[TruthfulQAItem], list[str]]:
  """The evaluation sample (the first `eval_prompts` of a seeded shuffle)
  and the other questions, in that shuffled order."""
  items = load_truthfulqa(data_dir)
  if cfg.eval_prompts > len(items):
    raise ValueError(
      f"eval_prompts={cfg.eval_prompts} but TruthfulQA has {len(items)} "
      "questions"
    )
  order = np.random.default_rng(cfg.seed).permutation(len(items))
  chosen = [items[i] for i in order[: cfg.eval_prompts]]
  return chosen, [items[i].question for i in order[cfg.eval_prompts :]]


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


def in_batches(fn, prompts, lengths, batch: int):
  """`fn(prompts, lengths)` on consecutive batches of `batch` rows (a short
  last batch filled with copies of its first row); numpy outputs stacked
  on the row axis."""
  outs = []
  for start in range(0, len(prompts), batch):
    p, n = prompts[start : start + batch], lengths[start : start + batch]
    fill = batch - len(p)
    if fill:
      p = np.concatenate([p, np.repeat(p[:1], fill, 0)])
      n = np.concatenate([n, np.repeat(n[:1], fill)])
    out = fn(p, n)
    outs.append(_tree(lambda x: np.asarray(x)[: batch - fill], out))
  return _tree(lambda *xs: np.concatenate(xs), *outs)


def _tree(fn, *trees):
  """`fn` over the arrays of `trees` (a `DecodeOutput`'s fields or one
  array)."""
  if isinstance(trees[0], DecodeOutput):
    return DecodeOutput(
      **{
        f: jnp.asarray(fn(*(getattr(t, f) for t in trees)))
        for f in DecodeOutput.__dataclass_fields__
      }
    )
  return fn(*trees)


def answer_span(tokens: np.ndarray, eos_id: int) -> np.ndarray:
  """[P, N] bool: positions up to and including each row's first EOS."""
  is_eos = tokens == eos_id
  return np.cumsum(is_eos, axis=1) - is_eos == 0


def answer_ids(tokens: np.ndarray, eos_id: int) -> list[list[int]]:
  """Each row's answer ids before its first EOS."""
  span = answer_span(tokens, eos_id)
  return [
    [int(t) for t, keep in zip(row, m) if keep and t != eos_id]
    for row, m in zip(tokens, span)
  ]


def accuracies(texts: list[str], items: list[TruthfulQAItem]) -> list[float]:
  """Per question 1.0 when the answer is closer to a correct reference."""
  return [
    float(reference_accuracy(t, i.correct_answers, i.incorrect_answers))
    for t, i in zip(texts, items)
  ]


def classifier_updates(out: DecodeOutput, kind: str, mode: str, exits: int):
  """[P, N] Mamba-classifier state updates `token_flops` does not count.

  A `mamba` exit classifier absorbs the token at every exit whose score it
  reads without projecting (rule `learned`: `scores_computed` of them), and
  under `propagate` at every exit the token skipped. Other kinds' updates
  are free (`mlp`, `lm_head`) or already inside `exit_projections`.
  """
  if kind != "mamba":
    return np.zeros(out.tokens.shape)
  updates = np.asarray(out.scores_computed, float)
  if mode == "propagate":
    updates = updates + np.maximum(exits - np.asarray(out.segments_run), 0)
  return updates


def per_question(out, full, span, texts, items, costs, updates, adapter):
  """The per-question values of one sweep point (module docstring)."""
  valid = np.asarray(out.valid)[:, 1:]
  flops = token_flops(out, costs)[:, 1:] + updates[:, 1:] * adapter
  flops = np.where(valid, flops / costs.full, 0.0)
  layers = np.where(valid, np.asarray(out.exit_layer)[:, 1:], 0)
  same = (np.asarray(out.tokens) == full) & span
  steps = valid.sum(axis=1)
  return {
    "accuracy": accuracies(texts, items),
    "consistency": np.stack([same.sum(1), span.sum(1)], 1).tolist(),
    "flops": [[float(f), int(s)] for f, s in zip(flops.sum(1), steps)],
    "layers": [[int(x), int(s)] for x, s in zip(layers.sum(1), steps)],
  }


def head_costs(costs: DecodeCosts, kind: str, rule: str) -> dict:
  """Each piece at the exits in blocks (mean block, one position)."""
  b = costs.in_blocks()
  head = float(np.mean(b["head"]))
  adapter = head - b["final"]  # the kind's refinement before the head
  passing = head if rule != "learned" else float(np.mean(b["score"]))
  if rule == "learned" and kind == "mamba":
    passing += adapter
  return {
    "lm_head": b["final"],
    "score_head": float(np.mean(b["score"])),
    "adapter": adapter,
    "exit_projection": head,
    "passing_an_exit": passing,
    "propagate": b["propagate"],
    "block_flops": float(costs.block.mean()),
  }


def sweep(
  cfg: Config,
  backbone_name: str,
  spec: BackboneSpec,
  bb: Backbone,
  heads_by_kind: dict,
  items: list[TruthfulQAItem],
  progress=None,
) -> tuple[list[dict], dict, dict]:
  """Records of every (classifier, state mode, λ), the full model and the
  constant answers.

  Returns:
    (records, samples, head costs per kind): `samples` maps a point's label
    to its first answers, for the Markdown report.
  """
  model, batch = bb.model, cfg.decode_batch
  exit_layers = cfg.exit_layers(model.num_layers)
  prompts, lengths = encode_prompts(bb, items)
  n_new = cfg.max_new_tokens
  max_len = cache_length(prompts.shape[1], n_new)
  full_fn = functools.partial(
    generate_full, model, max_new_tokens=n_new, eos_id=bb.eos_id
  )
  full = in_batches(full_fn, prompts, lengths, batch)
  span = answer_span(full, bb.eos_id)
  full_answers = answer_ids(full, bb.eos_id)
  full_texts = [bb.decode(a) for a in full_answers]
  timed = prompts[: cfg.timing_prompts], lengths[: cfg.timing_prompts]
  full_timed_tokens = int(span[: cfg.timing_prompts].sum())
  disabled = functools.partial(
    generate,
    model,
    LMHeadExits(),
    threshold=0.0,
    max_len=max_len,
    config=DecodeConfig(
      exit_layers=exit_layers,
      exits_enabled=False,
      max_new_tokens=n_new,
      eos_id=bb.eos_id,
    ),
  )
  timed_full = lambda: in_batches(
    lambda p, n: disabled(prompts=p, lengths=n), *timed, batch
  )
  base = {
    "backbone": backbone_name,
    "decode_batch": batch,
    "num_layers": model.num_layers,
  }
  records = [
    {
      **base,
      "classifier": "none",
      "rule": None,
      "state_mode": "full",
      "threshold": None,
      "per_question": {
        "accuracy": accuracies(full_texts, items),
        "consistency": np.stack([span.sum(1), span.sum(1)], 1).tolist(),
        "answers": full_texts,
        "answer_ids": full_answers,
      },
    }
  ]
  for name, answer in CONSTANT_ANSWERS.items():
    texts = [answer] * len(items)
    records.append(
      {
        **base,
        "classifier": "constant",
        "rule": name,
        "state_mode": "none",
        "threshold": None,
        "answer": answer,
        "per_question": {"accuracy": accuracies(texts, items)},
      }
    )
  samples = {"full model": full_texts[:3]}
  kind_costs = {}
  modes = cfg.modes(spec)
  points = [
    (k, m, t)
    for k in heads_by_kind
    for m in modes
    for t in cfg.thresholds_of(k)
  ]
  with ProgressBar(len(points), enabled=progress) as bar:
    for kind, heads in heads_by_kind.items():
      rule = RULE_OF_KIND[kind]
      costs = decode_costs(
        model, heads, (0, *exit_layers, model.num_layers), max_len
      )
      kind_costs[kind] = head_costs(costs, kind, rule)
      adapter = kind_costs[kind]["adapter"] * costs.block.mean()
      for mode in modes:
        dcfg = DecodeConfig(
          exit_layers=exit_layers,
          rule=rule,
          state_mode=mode,
          max_new_tokens=n_new,
          pending=cfg.pending,
          eos_id=bb.eos_id,
        )
        for threshold in cfg.thresholds_of(kind):
          run = functools.partial(
            generate,
            model,
            heads,
            threshold=float(threshold),
            config=dcfg,
            max_len=max_len,
          )
          fn = lambda p, n: run(prompts=p, lengths=n)
          out = in_batches(fn, prompts, lengths, batch)
          texts = [bb.decode(a) for a in answer_ids(out.tokens, bb.eos_id)]
          times = time_side_by_side(
            {
              "exit": (lambda: in_batches(fn, *timed, batch), ()),
              "full": (timed_full, ()),
            },
            warmup=1,
            repeats=cfg.timing_repeats,
          )
          updates = classifier_updates(out, kind, mode, len(exit_layers))
          timed_tokens = int(np.asarray(out.valid)[: cfg.timing_prompts].sum())
          records.append(
            {
              **base,
              "classifier": kind,
              "rule": rule,
              "state_mode": mode,
              "threshold": float(threshold),
              "tokens_per_s": timed_tokens / times["exit"].median,
              "full_tokens_per_s": full_timed_tokens / times["full"].median,
              "per_question": per_question(
                out, full, span, texts, items, costs, updates, adapter
              ),
            }
          )
          samples[f"{kind} / {mode} / λ={threshold}"] = texts[:3]
          bar.update(1, {"kind": kind, "mode": mode, "λ": threshold})
  return records, samples, kind_costs
