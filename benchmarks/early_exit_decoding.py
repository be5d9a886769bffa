"""Early-exit decoding that pays for itself? Speed and quality, with intervals.

Spec: `llm_exits.md` §1 (state modes, costs), §5.1 (CALM), §5.3 (LayerSkip
self-speculative decoding); issue 19 parts 3, 5, 6 and 7.

SmolLM2-135M-Instruct (offline GGUF, 30 blocks, d=576, V=49152) answers
chat-templated TruthfulQA questions greedily (EOS ignored, so every run
decodes exactly N tokens). Against the full model (`generate_full`) it
times, at batch 1 and batch B:

* `exits_disabled`: the engine with exits off (its overhead over
  `generate_full`, same tokens);
* CALM's baseline: the shared LM head at exits (8, 15, 22) with the
  max-softmax rule (`lm_head`), which projects to the vocabulary at every
  exit it checks;
* the trained cheap heads of `decoding_heads.py` (`mlp`: a residual MLP
  before the shared head, trained by self-distillation; its linear
  consistency score, `rule="learned"`): a 576 -> 1 probe at each exit
  passed, the vocabulary projection only at the exit taken;
* the trained heads with the max-softmax rule (confidence from the
  projection at every exit checked), for the cost of that choice;
* LayerSkip-style self-speculative decoding (lossless) at the (E, d) of
  the best acceptance-based cost model on a few prompts, drafting through
  the shared head and through the trained `mlp` exit at E.

Thresholds are chosen *before* timing, by simulation on the full model's
own answers (teacher-forced, `simulate_exits`): for each head and rule,
the smallest λ of a quantile grid whose simulated per-token agreement with
the final layer reaches each of `agreement_targets`. The realised
consistency then shows what free-running decoding does to that.

Timing: every candidate runs once untimed on the first unit (compiling),
then each unit (a prompt at batch 1, B prompts at batch B) is timed for
every candidate, interleaved (`repeats` rounds, the starting candidate
rotating), so machine noise hits all alike. Per unit, the median over
rounds. Intervals are over units (95 %): the realised speed-up is the
mean of per-unit t_full / t_candidate (t interval); consistency and the
TruthfulQA ROUGE accuracy are means over prompts (bootstrap), and the
accuracy change is paired against the full model's (paired bootstrap).

  python benchmarks/early_exit_decoding.py          # SmolLM2, BENCHMARKS.md
  python benchmarks/early_exit_decoding.py --quick  # tiny random Llama

Writes `benchmarks/results/early_exit_decoding.json` (`--quick`:
`early_exit_decoding_quick.json`; BENCHMARKS.md left alone): records
`{"backbone", "state_mode", "heads", "rule", "batch", "threshold",
"tokens_per_s", "full_tokens_per_s", "realised_speedup" (+ "_ci"),
"theoretical_speedup", "avg_layers", "flops_fraction", "consistency"
(+ "_ci"), "identical_to_full", "rouge_acc" (+ "_ci", "_diff_ci"), ...}`
(the first, the full model at batch 1, also holds the constant answer's
accuracy), and `decoding_heads{_quick}.json`: the heads' training report
(agreement before/after per exit) and each piece's cost in blocks.
"""

import argparse
import dataclasses
import functools
import os
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxexit import checks, report, stats, text_metrics
from jaxexit.data.text import load_truthfulqa
from jaxexit.decoding.config import DecodeConfig
from jaxexit.decoding.cost import decode_costs
from jaxexit.decoding.engine import cache_length, generate
from jaxexit.decoding.exit_heads import LMHeadExits
from jaxexit.decoding.full import generate_full
from jaxexit.decoding.metrics import decode_metrics
from jaxexit.decoding.self_speculative import (
  cost_of,
  generate_self_speculative,
)
from jaxexit.decoding.simulate import simulate_exits
from jaxexit.methods.dynamax import ExitClassifiers
from jaxexit.models.gguf_weights import load_smollm2

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import decoding_heads  # noqa: E402 (sibling script)
import self_speculative_decoding  # noqa: E402 (sibling script)

RESULTS = HERE / "results" / "early_exit_decoding.json"
QUICK_RESULTS = HERE / "results" / "early_exit_decoding_quick.json"
BENCHMARKS_MD = HERE.parent / "BENCHMARKS.md"
MODE = "self_speculative"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
  """One run's sizes.

  Attributes:
    num_prompts: held-out TruthfulQA questions (≤ decoding_heads.HELD_OUT).
    max_new_tokens: N tokens per prompt.
    batches: batch sizes timed (each must divide num_prompts).
    repeats: timed rounds per unit.
    exit_layers: exits of the engine (heads trained at each).
    agreement_targets: simulated per-token agreements that pick λ.
    spec_grid: (E, d) self-speculative settings searched (acceptance).
    spec_search_prompts: prompts of that search.
    heads: training of the cheap heads.
  """

  num_prompts: int = 32
  max_new_tokens: int = 32
  batches: tuple[int, ...] = (1, 8)
  repeats: int = 1
  exit_layers: tuple[int, ...] = (8, 15, 22)
  agreement_targets: tuple[float, ...] = (0.99, 0.95, 0.9)
  spec_grid: tuple[tuple[int, int], ...] = (
    (8, 2),
    (15, 2),
    (15, 3),
    (22, 3),
    (22, 4),
  )
  spec_search_prompts: int = 8
  heads: decoding_heads.HeadTraining = decoding_heads.HeadTraining(steps=200)

  def __post_init__(self):
    checks.positive_int("num_prompts", self.num_prompts, minimum=2)
    checks.positive_int("max_new_tokens", self.max_new_tokens, minimum=2)
    checks.positive_int("repeats", self.repeats)
    for b in self.batches:
      checks.positive_int("batches", b)
      if self.num_prompts % b:
        raise ValueError(
          f"batches={self.batches}: {b} does not divide "
          f"num_prompts={self.num_prompts}"
        )
    for t in self.agreement_targets:
      checks.in_range("agreement_targets", t, 0.0, 1.0)
    checks.positive_int("spec_search_prompts", self.spec_search_prompts)


FULL = Settings()
QUICK = Settings(
  num_prompts=4,
  max_new_tokens=12,
  batches=(1, 2),
  repeats=1,
  exit_layers=(2, 4, 6),
  agreement_targets=(0.9, 0.5),
  spec_grid=((2, 2), (4, 2)),
  spec_search_prompts=2,
  heads=decoding_heads.HeadTraining(
    questions=8, answer_tokens=12, row_len=16, steps=20, batch_size=4
  ),
)


@dataclasses.dataclass(frozen=True)
class Method:
  """One early-exit setting of `generate`.

  Attributes:
    heads: "lm_head" (shared head, CALM) or "mlp" (trained).
    rule: "max_softmax" or "learned" (the heads' score).
    state_mode: a `DecodeConfig.state_mode`.
    target: the simulated agreement that picked λ.
  """

  heads: str
  rule: str
  state_mode: str
  target: float

  @property
  def name(self) -> str:
    return f"{self.heads}/{self.rule}/{self.state_mode}@{self.target}"


def methods(targets: tuple[float, ...], batch: int) -> list[Method]:
  """The early-exit settings timed at `batch` (fewer at batch > 1)."""
  mid = targets[len(targets) // 2]
  out = [Method("mlp", "learned", "freeze", t) for t in targets]
  out.append(Method("lm_head", "max_softmax", "freeze", mid))
  if batch == 1:
    out.append(Method("mlp", "learned", "propagate", mid))
    out.append(Method("mlp", "max_softmax", "freeze", mid))
  return list(dict.fromkeys(out))


def exit_view(heads: ExitClassifiers, e: int) -> ExitClassifiers:
  """A one-exit `ExitClassifiers` sharing exit `e`'s modules (for drafts)."""
  cfg = dataclasses.replace(heads.config, num_exits=1)
  view = ExitClassifiers(cfg, rngs=nnx.Rngs(0))
  view.score_heads[0] = heads.score_heads[e]
  if heads.exits:
    view.exits[0] = heads.exits[e]
  return view


def teacher_forced(prompts, lengths, answers):
  """([P, T+N] prompt + answer, [P] lengths) for simulation."""
  n = answers.shape[1]
  seqs = np.zeros((len(prompts), prompts.shape[1] + n), np.int32)
  for row, p, k, a in zip(seqs, prompts, lengths, answers):
    row[: k + n] = np.concatenate([p[:k], a])
  return seqs, lengths + n


def pick_thresholds(
  model, heads, rule, exit_layers, seqs, seq_lengths, lengths, n, targets
) -> dict[float, tuple[float, float]]:
  """target -> (λ, simulated agreement): the smallest λ of a quantile grid
  whose simulated per-token agreement on decode positions ≥ target (λ = 1
  when none reaches it).

  One teacher-forced pass (`simulate_exits`) gives every exit's measure
  and prediction; the rules used here are memoryless thresholds (exit at
  the first exit whose measure ≥ λ), so every λ is decided after the fact.
  """
  config = DecodeConfig(exit_layers=exit_layers, rule=rule)
  decode = np.zeros(seqs.shape, bool)
  for row, k in zip(decode, lengths):
    row[k : k + n - 1] = True  # positions predicting answer tokens 2..N
  sim = simulate_exits(model, heads, seqs, seq_lengths, 1.0, config)
  conf = np.asarray(sim.exit_confidence)[decode][:, :-1]  # [Q, E]
  pred = np.asarray(sim.exit_prediction)[decode]  # [Q, E+1]
  grid = np.unique(np.quantile(conf, np.linspace(0.0, 1.0, 201)))
  grid = np.append(grid[grid < 1.0], 1.0)

  def agreement(lam: float) -> float:
    ok = np.concatenate([conf >= lam, np.ones_like(conf[:, :1])], axis=1)
    chosen = np.take_along_axis(pred, ok.argmax(1)[:, None], 1)[:, 0]
    return float(np.mean(chosen == pred[:, -1]))

  scores = [agreement(lam) for lam in grid]
  chosen = {}
  for t in targets:
    i = next((i for i, a in enumerate(scores) if a >= t), len(grid) - 1)
    chosen[t] = (float(grid[i]), scores[i])
  return chosen


def units(prompts, lengths, batch: int):
  """[(prompts [b, T], lengths [b])] consecutive groups of `batch`."""
  return [
    (prompts[i : i + batch], lengths[i : i + batch])
    for i in range(0, len(prompts), batch)
  ]


def time_units(candidates: dict, groups: list, repeats: int) -> tuple:
  """Interleaved per-unit timing.

  Args:
    candidates: name -> fn(prompts, lengths).
    groups: the units.
    repeats: timed rounds.

  Returns:
    ({name: [U] median seconds per unit}, {name: [outputs per unit]}).
  """
  names = list(candidates)
  for name in names:  # compile
    jax.block_until_ready(candidates[name](*groups[0]))
  secs = {name: [[] for _ in groups] for name in names}
  outs = {name: [None] * len(groups) for name in names}
  turn = 0
  for _ in range(repeats):
    for u, group in enumerate(groups):
      for i in range(len(names)):
        name = names[(turn + i) % len(names)]
        start = time.perf_counter()
        out = jax.block_until_ready(candidates[name](*group))
        secs[name][u].append(time.perf_counter() - start)
        outs[name][u] = out
      turn += 1
  return (
    {k: np.array([np.median(s) for s in v]) for k, v in secs.items()},
    outs,
  )


def concat(outs: list):
  """Joins per-unit outputs along the batch axis (scalar counts: summed)."""
  join = lambda *xs: (
    jnp.concatenate(xs) if jnp.ndim(xs[0]) else jnp.sum(jnp.stack(xs))
  )
  return jax.tree.map(join, *outs)


class Quality:
  """Per-prompt consistency and TruthfulQA ROUGE accuracy against full.

  Args:
    full: [P, N] the full model's tokens.
    answer_fn: answers [P, N] -> [P] ROUGE accuracies, or None (no
      references).
  """

  def __init__(self, full: np.ndarray, answer_fn):
    self.full = full
    self.answer_fn = answer_fn
    self.full_acc = self.accuracy(full)

  def accuracy(self, tokens: np.ndarray) -> np.ndarray | None:
    if self.answer_fn is None:
      return None
    return self.answer_fn(tokens)

  def fields(self, tokens: np.ndarray) -> dict:
    """consistency (decode positions 2..N) and accuracy, with intervals."""
    per_prompt = (tokens[:, 1:] == self.full[:, 1:]).mean(axis=1)
    cons = stats.bootstrap_interval(per_prompt, seed=0)
    out = {
      "consistency": round(float(per_prompt.mean()), 4),
      "consistency_ci": cons.as_list(),
      "identical_to_full": bool(np.array_equal(tokens, self.full)),
    }
    acc = self.accuracy(tokens)
    if acc is not None:
      diff = stats.paired_bootstrap_difference(acc, self.full_acc, seed=0)
      out |= {
        "rouge_acc": round(float(acc.mean()), 4),
        "rouge_acc_ci": stats.bootstrap_interval(acc, seed=0).as_list(),
        "rouge_acc_diff": round(diff.mean, 4),
        "rouge_acc_diff_ci": diff.as_list(),
        "full_rouge_acc": round(float(self.full_acc.mean()), 4),
      }
    return out


def best_spec_setting(model, heads, prompts, lengths, settings: Settings):
  """(E, d, theoretical speed-up, acceptance) of the best `spec_grid` entry,
  drafting through the trained exit at E, on the first prompts (untimed)."""
  count = settings.spec_search_prompts
  results = []
  for e, d in settings.spec_grid:
    view = exit_view(heads, settings.exit_layers.index(e))
    outs = [
      generate_self_speculative(
        model,
        p,
        k,
        exit_layer=e,
        draft_len=d,
        max_new_tokens=settings.max_new_tokens,
        exit_head=view,
      )
      for p, k in units(prompts[:count], lengths[:count], 1)
    ]
    accepted = sum(int(np.sum(o.accepted)) for o in outs)
    rounds = sum(int(np.sum(o.row_rounds)) for o in outs)
    rate = accepted / max(rounds, 1)
    cost = cost_of(outs[0], model.num_layers, e, d)
    cost = dataclasses.replace(cost, accepted=rate)
    results.append((e, d, cost.theoretical_speedup, rate))
  return max(results, key=lambda r: r[2]), results


def speed_fields(secs: np.ndarray, full_secs: np.ndarray, tokens: int):
  """tokens/s and the per-unit realised speed-up with its t interval."""
  ratio = stats.t_interval(full_secs / secs)
  return {
    "tokens_per_s": round(tokens / float(secs.sum()), 2),
    "full_tokens_per_s": round(tokens / float(full_secs.sum()), 2),
    "realised_speedup": round(ratio.mean, 4),
    "realised_speedup_ci": ratio.as_list(),
    "seconds": round(float(secs.sum()), 3),
    "full_seconds": round(float(full_secs.sum()), 3),
  }


def exit_shares(out, bounds) -> dict[str, float]:
  """Share of decode tokens produced at each exit layer (collapse check)."""
  layers = np.asarray(out.exit_layer)[:, 1:][np.asarray(out.valid)[:, 1:]]
  return {str(b): round(float(np.mean(layers == b)), 4) for b in bounds[1:]}


class Bench:
  """Everything one backbone's timing needs, built once.

  Args:
    model: the decoder.
    heads: the trained `mlp` exits (`decoding_heads.trained_heads`).
    prompts, lengths: [P, T] held-out prompts, [P] lengths.
    answer_fn: answers [P, N] -> [P] ROUGE accuracies (None: none).
    settings: sizes.
    log: progress printer.
  """

  def __init__(self, model, heads, prompts, lengths, answer_fn, settings, log):
    self.model, self.settings, self.log = model, settings, log
    self.prompts, self.lengths = prompts, lengths
    self.answer_fn = answer_fn
    n, layers = settings.max_new_tokens, settings.exit_layers
    self.bounds = (0, *layers, model.num_layers)
    self.heads = {"lm_head": LMHeadExits(), "mlp": heads}
    self.costs = {
      name: decode_costs(
        model, h, self.bounds, cache_length(prompts.shape[1], n)
      )
      for name, h in self.heads.items()
    }
    full = concat(
      [
        generate_full(model, p, k, max_new_tokens=n)
        for p, k in units(prompts, lengths, 1)
      ]
    )
    seqs, seq_lengths = teacher_forced(prompts, lengths, full)
    self.thresholds = {}
    for m in methods(settings.agreement_targets, 1):
      key = (m.heads, m.rule)
      if key not in self.thresholds:
        self.thresholds[key] = pick_thresholds(
          model,
          self.heads[m.heads],
          m.rule,
          layers,
          seqs,
          seq_lengths,
          lengths,
          n,
          settings.agreement_targets,
        )
        log(f"  thresholds {key}: {self.thresholds[key]}")
    self.spec, self.spec_search = best_spec_setting(
      model, heads, prompts, lengths, settings
    )
    log(
      f"  self-speculative search (E, d, theoretical, acceptance): "
      f"{self.spec_search}"
    )

  def config(self, **kw) -> DecodeConfig:
    return DecodeConfig(
      exit_layers=self.settings.exit_layers,
      max_new_tokens=self.settings.max_new_tokens,
      **kw,
    )

  def candidates(self, batch: int) -> dict:
    n, model = self.settings.max_new_tokens, self.model
    cands = {
      "full": functools.partial(generate_full, model, max_new_tokens=n),
      "exits_disabled": functools.partial(
        generate,
        model,
        self.heads["lm_head"],
        threshold=1.0,
        config=self.config(exits_enabled=False),
      ),
    }
    for m in methods(self.settings.agreement_targets, batch):
      lam = self.thresholds[(m.heads, m.rule)][m.target][0]
      cands[m.name] = functools.partial(
        generate,
        model,
        self.heads[m.heads],
        threshold=lam,
        config=self.config(rule=m.rule, state_mode=m.state_mode),
      )
    e, d = self.spec[:2]
    drafts = {"mlp": exit_view(self.heads["mlp"], self.bounds.index(e) - 1)}
    if batch == 1:
      drafts["lm_head"] = None
    for name, head in drafts.items():
      cands[f"{MODE}/{name}"] = functools.partial(
        generate_self_speculative,
        model,
        exit_layer=e,
        draft_len=d,
        max_new_tokens=n,
        exit_head=head,
      )
    return cands

  def measure(self, batch: int) -> list[dict]:
    """Times every candidate at `batch`; one record each (full included)."""
    cands = self.candidates(batch)
    load = [os.getloadavg()[0]]
    self.log(
      f"  batch {batch}: timing {len(cands)} candidates (load {load[0]:.1f})"
    )
    groups = units(self.prompts, self.lengths, batch)
    secs, outs = time_units(cands, groups, self.settings.repeats)
    load.append(os.getloadavg()[0])
    full = np.asarray(concat(outs["full"]))
    quality = Quality(full, self.answer_fn)
    tokens = full.size
    base = {
      "backbone": "transformer",
      "batch": batch,
      "prompts": int(len(full)),
      "max_new_tokens": int(full.shape[1]),
      "load_avg_1m": [round(x, 2) for x in load],
    }
    records = []
    for name in cands:
      rec = dict(base) | speed_fields(secs[name], secs["full"], tokens)
      out = concat(outs[name])
      rec |= self.describe(name, out)
      rec |= quality.fields(np.asarray(out if name == "full" else out.tokens))
      records.append(rec)
    return records

  def describe(self, name: str, out) -> dict:
    """The candidate's settings and cost fields."""
    if name == "full":
      return {
        "state_mode": "full",
        "heads": "-",
        "rule": "-",
        "theoretical_speedup": 1.0,
        "avg_layers": float(self.bounds[-1]),
      }
    if name.startswith(MODE):
      e, d = self.spec[:2]
      rate = float(np.sum(out.accepted)) / max(float(np.sum(out.row_rounds)), 1)
      cost = dataclasses.replace(
        cost_of(out, self.model.num_layers, e, d), accepted=rate
      )
      return {
        "state_mode": MODE,
        "heads": name.split("/")[1],
        "rule": "-",
        "exit_layer": e,
        "draft_len": d,
        "acceptance_rate": round(rate, 4),
        "theoretical_speedup": round(cost.theoretical_speedup, 4),
        "sequential_layers_per_token": round(
          cost.sequential_layers_per_token, 4
        ),
      }
    if name == "exits_disabled":
      m = Method("lm_head", "max_softmax", "exits_disabled", 0.0)
      lam, sim = 1.0, None
    else:
      m = next(
        m for m in methods(self.settings.agreement_targets, 1) if m.name == name
      )
      lam, sim = self.thresholds[(m.heads, m.rule)][m.target]
    full = np.asarray(out.tokens)  # only the cost fields use it
    met = decode_metrics(out, full, self.costs[m.heads])
    return {
      "state_mode": m.state_mode,
      "heads": m.heads,
      "rule": m.rule,
      "threshold": lam,
      "target_agreement": m.target if sim is not None else None,
      "simulated_agreement": None if sim is None else round(sim, 4),
      "avg_layers": round(met["avg_layers"], 4),
      "exit_shares": exit_shares(out, self.bounds),
      "flops_fraction": round(met["flops_fraction"], 4),
      "theoretical_speedup": round(1.0 / met["flops_fraction"], 4),
    }


# TruthfulQA's reference non-answer: the constant row of the quality table.
CONSTANT_ANSWER = "I have no comment."


def truthfulqa_scorer(tokenizer, items):
  """(answers [P, N] -> [P] accuracies, the constant answer's [P]).

  Row i answers `items[i]`. The answer is cut at the first end-of-turn
  token, decoded, and scored by TruthfulQA's ROUGE accuracy (closer to a
  correct reference than to every incorrect one,
  `jaxexit.text_metrics.reference_accuracy`).
  """

  def one(tokens, item) -> bool:
    ids = [int(t) for t in tokens]
    if tokenizer.eos_id in ids:
      ids = ids[: ids.index(tokenizer.eos_id)]
    return text_metrics.reference_accuracy(
      tokenizer.decode(ids), item.correct_answers, item.incorrect_answers
    )

  def score(answers) -> np.ndarray:
    return np.array([one(t, it) for t, it in zip(answers, items)], np.float64)

  constant = np.array(
    [
      text_metrics.reference_accuracy(
        CONSTANT_ANSWER, item.correct_answers, item.incorrect_answers
      )
      for item in items
    ],
    np.float64,
  )
  return score, constant


def chat_prompts(tokenizer, count: int) -> tuple[np.ndarray, np.ndarray]:
  """[P, T] right-padded chat-templated TruthfulQA questions and [P] lengths
  (the first `count`, all held out from head training)."""
  if count > decoding_heads.HELD_OUT:
    raise ValueError(
      f"count={count} > HELD_OUT={decoding_heads.HELD_OUT}: later "
      "TruthfulQA questions train the exit heads"
    )
  items = load_truthfulqa()[:count]
  ids = decoding_heads.chat_ids(tokenizer, [it.question for it in items])
  return decoding_heads.pad_rows(ids)


def random_prompts(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  rows = np.random.default_rng(seed).integers(1, 256, (count, 12), np.int32)
  return rows, np.full((count,), 12, np.int32)


def _ci(r: dict, key: str, fmt: str = "{:.2f}") -> str:
  lo, hi = r.get(f"{key}_ci") or (None, None)
  if lo is None:
    return fmt.format(r[key])
  return f"{fmt.format(r[key])} [{fmt.format(lo)}, {fmt.format(hi)}]"


def _label(r: dict) -> str:
  if r["state_mode"] == MODE:
    return (
      f"self-speculative, {r['heads']} draft (E={r['exit_layer']}, "
      f"d={r['draft_len']}, acceptance {r['acceptance_rate']:.2f})"
    )
  if r["state_mode"] in ("full", "exits_disabled"):
    return r["state_mode"]
  return f"{r['heads']} · {r['rule']} · {r['state_mode']}"


def render(
  records: list[dict], heads: dict, about: str, settings: Settings
) -> str:
  """The BENCHMARKS.md section: setup, heads and the table.

  Args:
    records: the timing records (`Bench.measure`).
    heads: the heads' report (`heads_report`).
    about: the backbone in words.
    settings: the run's sizes.
  """
  blocks = heads["cost_in_blocks"]
  agree = ", ".join(
    f"E={e}: {a:.3f} -> {b:.3f}"
    for e, a, b in zip(
      heads["exit_layers"], heads["agreement_before"], heads["agreement_after"]
    )
  )
  header = [
    "batch",
    "method",
    "λ (sim. agreement)",
    "avg layers",
    "tokens at each exit",
    "theoretical",
    "realised [95 % CI]",
    "tok/s",
    "full tok/s",
    "consistency [95 % CI]",
    "ROUGE acc [95 % CI]",
    "Δ acc vs full [95 % CI]",
    "identical",
  ]
  rows = []
  for r in records:
    if "constant_rouge_acc" in r:
      const = {k[len("constant_") :]: v for k, v in r.items() if "const" in k}
      rows.append(
        ["-", f"constant answer “{const['answer']}”"]
        + ["-"] * 8
        + [_ci(const, "rouge_acc"), "-", "-"]
      )
    lam = "-"
    if r.get("simulated_agreement") is not None:
      lam = f"{r['threshold']:.4g} ({r['simulated_agreement']:.2f})"
    shares = r.get("exit_shares")
    rows.append(
      [
        str(r["batch"]),
        _label(r),
        lam,
        f"{r['avg_layers']:.2f}" if "avg_layers" in r else "-",
        "/".join(f"{v:.2f}" for v in shares.values()) if shares else "-",
        f"{r['theoretical_speedup']:.2f}x",
        _ci(r, "realised_speedup"),
        f"{r['tokens_per_s']:.1f}",
        f"{r['full_tokens_per_s']:.1f}",
        _ci(r, "consistency"),
        _ci(r, "rouge_acc") if "rouge_acc" in r else "-",
        _ci(r, "rouge_acc_diff", "{:+.2f}") if "rouge_acc" in r else "-",
        str(r["identical_to_full"]),
      ]
    )
  exits = "/".join(map(str, settings.exit_layers))
  loads = [x for r in records for x in r.get("load_avg_1m", [])]
  cpu = platform.processor() or platform.machine()
  return (
    f"{about}; exits after {settings.exit_layers} of "
    f"{heads['num_layers']} blocks. Heads (`benchmarks/decoding_heads.py`): "
    f"`mlp` exits + linear scores trained {settings.heads.steps} steps on "
    f"{heads['train_rows']} x {heads['row_len']} answer positions of the "
    f"model's own greedy answers to {heads['questions']} training questions;"
    f" held-out top-1 agreement with the final layer (shared head -> "
    f"trained): {agree}. Cost in blocks at T = 1: shared-head projection "
    f"{np.mean(blocks['lm_head']['head']):.2f}, mlp exit + projection "
    f"{np.mean(blocks['mlp']['head']):.2f}, score "
    f"{np.mean(blocks['mlp']['score']):.4f}. {settings.num_prompts} held-out "
    f"TruthfulQA prompts, greedy, {settings.max_new_tokens} tokens (EOS "
    f"ignored), fp32, CPU ({cpu}, {os.cpu_count()} cores, shared, 1-minute "
    f"load {min(loads):.1f}–{max(loads):.1f}), JAX {jax.__version__}; "
    f"median of {settings.repeats} interleaved rounds per unit; intervals "
    "over units (prompts at batch 1, groups at batch > 1). Tokens at each "
    f"exit: share of decode tokens at {exits}/{heads['num_layers']}. "
    "Command: `python "
    "benchmarks/early_exit_decoding.py`.\n\n"
    + report.markdown_table(header, rows)
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--quick",
    action="store_true",
    help="tiny random Llama, few prompts; writes the _quick json and "
    "leaves BENCHMARKS.md alone",
  )
  parser.add_argument("--out", type=pathlib.Path, default=None)
  parser.add_argument(
    "--workdir",
    type=pathlib.Path,
    default=None,
    help="checkpoints of the trained heads (default runs/decoding_heads"
    "[_quick]); rerunning resumes them",
  )
  args = parser.parse_args()
  settings = QUICK if args.quick else FULL
  out = args.out or (QUICK_RESULTS if args.quick else RESULTS)
  suffix = "_quick" if args.quick else ""
  workdir = args.workdir or HERE.parent / "runs" / f"decoding_heads{suffix}"
  start = time.perf_counter()
  log = lambda msg: print(
    f"[{time.perf_counter() - start:5.0f} s] {msg}", flush=True
  )
  if args.quick:
    model, _, _, about = self_speculative_decoding.tiny_llama()
    prompts, lengths = random_prompts(settings.num_prompts, seed=0)
    train_prompts = random_prompts(settings.heads.questions, seed=1)
    answer_fn = constant = None
  else:
    model, tokenizer = load_smollm2()
    about = (
      "SmolLM2-135M-Instruct (GGUF Q4_1 weights dequantised to fp32; "
      "30 blocks, d=576)"
    )
    prompts, lengths = chat_prompts(tokenizer, settings.num_prompts)
    train_prompts = decoding_heads.question_prompts(tokenizer, settings.heads)
    items = load_truthfulqa()[: settings.num_prompts]
    answer_fn, constant = truthfulqa_scorer(tokenizer, items)
  heads, heads_report = decoding_heads.trained_heads(
    model, *train_prompts, settings.exit_layers, settings.heads, workdir, log
  )
  log(f"heads: {heads_report}")
  bench = Bench(model, heads, prompts, lengths, answer_fn, settings, log)
  heads_report |= {
    "backbone": "transformer",
    "num_layers": model.num_layers,
    "cost_in_blocks": {k: c.in_blocks() for k, c in bench.costs.items()},
    "spec_search": [list(r) for r in bench.spec_search],
  }
  report.write_json(out.parent / f"decoding_heads{suffix}.json", heads_report)
  records = []
  for batch in settings.batches:
    records += bench.measure(batch)
    report.write_json(out, records)  # nothing lost if a later batch dies
  if constant is not None:  # the quality table's constant row
    records[0] |= {  # the full model at the first batch size
      "constant_answer": CONSTANT_ANSWER,
      "constant_rouge_acc": round(float(constant.mean()), 4),
      "constant_rouge_acc_ci": stats.bootstrap_interval(
        constant, seed=0
      ).as_list(),
    }
    report.write_json(out, records)
  text = render(records, heads_report, about, settings)
  print(text)
  log("done")
  if not args.quick:
    report.write_section(BENCHMARKS_MD, "early_exit_decoding", text)


if __name__ == "__main__":
  main()
