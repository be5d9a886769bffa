"""Cheap exit heads for SmolLM2 decoding, trained on its own answers.

Spec: `llm_exits.md` §1.3 (CALM's meta classifier), §3.2 (DYNAMAX's MLP
exits), §5.3 (LayerSkip's early-exit loss). Issue 19 parts 3 and 6.

At each exit of the frozen SmolLM2 a DYNAMAX `mlp` exit
(`jaxexit.methods.dynamax.ExitClassifiers`: a residual MLP before the
shared norm + LM head) and its linear consistency score (576 -> 1) are
trained together on hidden states of the model's *own greedy answers* to
chat-templated questions (self-distillation: the distribution decoding
meets), with KL(p_L ‖ p_e) to the final layer plus the class-balanced BCE
of the score against "this exit's argmax equals the final layer's"
(`jaxexit.methods.dynamax_train`). The training questions are GSM8K and
CommonsenseQA train questions and TruthfulQA questions after the first
`HELD_OUT` (the decoding benchmark's prompts come from those first
`HELD_OUT`). Only answer positions are kept: the mlp exit and the score
act on one position at a time, so they are packed into rows of
`row_len` positions from different answers.

The trained module is a `DecoderExitHeads` with a `score` method, so
`generate(..., rule="learned")` checks a 576 -> 1 probe at every exit
passed and projects to the vocabulary only at the exit taken.

Checkpoints (orbax, resumable) carry a fingerprint of the backbone's
weights and of the training tokens.
"""

import dataclasses
import os
import pathlib

import numpy as np
from flax import nnx

from jaxexit import checks
from jaxexit.data import location, text
from jaxexit.decoding import answers as answers_lib
from jaxexit.methods import dynamax_train, exit_adapter
from jaxexit.methods.dynamax import ExitClassifiers

# TruthfulQA questions reserved for evaluation (never trained on).
HELD_OUT = 64


@dataclasses.dataclass(frozen=True)
class HeadTraining:
  """Sizes of the self-distillation data and of training.

  Attributes:
    questions: training questions per source (gsm8k, commonsenseqa,
      truthfulqa).
    answer_tokens: greedy tokens generated per question.
    max_prompt: questions whose chat prompt is longer are skipped.
    row_len: answer positions per packed training row.
    steps, batch_size, learning_rate: AdamW, warm-up then cosine.
    generate_batch: prompts per `generate_full` call.
  """

  questions: int = 128
  answer_tokens: int = 32
  max_prompt: int = 96
  row_len: int = 64
  steps: int = 300
  batch_size: int = 4
  learning_rate: float = 1e-3
  generate_batch: int = 16

  def __post_init__(self):
    for f in dataclasses.fields(self):
      if f.name != "learning_rate":
        checks.positive_int(f"HeadTraining.{f.name}", getattr(self, f.name))


def chat_ids(tokenizer, questions: list[str]) -> list[list[int]]:
  """Token ids of each question as one chat-templated user turn."""
  return [
    tokenizer.encode(
      tokenizer.apply_chat_template([{"role": "user", "content": q}])
    )
    for q in questions
  ]


def pad_rows(ids: list[list[int]], width: int | None = None):
  """([P, width] right-padded ids, [P] lengths); width: the longest."""
  return answers_lib.pad_prompts(ids, width or max(len(i) for i in ids))


def training_questions(
  per_source: int, data_dir: str | os.PathLike | None = None
) -> list[str]:
  """`per_source` questions each of GSM8K train, CommonsenseQA train and
  TruthfulQA after the held-out first `HELD_OUT`."""
  gsm = text.read_jsonl(
    location.require_file("gsm8k", "train", data_dir=data_dir)
  )
  csqa = text.read_jsonl(
    location.require_file("commonsenseqa", "train", data_dir=data_dir)
  )
  tqa = text.load_truthfulqa(data_dir)[HELD_OUT:]
  rng = np.random.default_rng(0)
  pick = lambda rows: [rows[i] for i in rng.permutation(len(rows))]
  questions = [r["question"] for r in pick(gsm)[:per_source]]
  questions += [
    r["question"]["stem"]
    + " Choices: "
    + ", ".join(c["text"] for c in r["question"]["choices"])
    for r in pick(csqa)[:per_source]
  ]
  questions += [item.question for item in pick(tqa)[:per_source]]
  return questions


def self_answers(model, prompts, lengths, n: int, batch: int) -> np.ndarray:
  """[P, n] the model's greedy answers (EOS ignored), `batch` per call."""
  ids = [list(p[:k]) for p, k in zip(prompts, lengths)]
  return np.array(
    answers_lib.greedy_answers(
      model, ids, max_new_tokens=n, eos_id=None, batch=batch, progress=False
    ),
    np.int32,
  )


def answer_features(
  model, prompts, lengths, answers, exit_layers, row_len: int
) -> dynamax_train.ExitFeatures:
  """Features of the answer positions only, packed into rows.

  Teacher-forces prompt + answer; keeps the positions that predict answer
  tokens 2..n (position length + j - 1 predicts answer token j + 1, whose
  context holds answer tokens 1..j) and packs them, in order, into
  [n', row_len] rows (a ragged tail is dropped).
  """
  n = answers.shape[1]
  seqs = np.zeros((len(prompts), prompts.shape[1] + n), np.int32)
  for row, p, k, a in zip(seqs, prompts, lengths, answers):
    row[: k + n] = np.concatenate([p[:k], a])
  feats = dynamax_train.exit_features(
    model, seqs, lengths + n, tuple(exit_layers), progress=False
  )
  keep = np.zeros(seqs.shape, bool)
  for row, k in zip(keep, lengths):
    row[k : k + n - 1] = True
  total = (int(keep.sum()) // row_len) * row_len
  pack = lambda x: x[keep][:total].reshape(-1, row_len, *x.shape[2:])
  return dynamax_train.ExitFeatures(
    hidden=pack(feats.hidden),
    final=pack(feats.final),
    targets=pack(feats.targets),
    mask=np.ones((total // row_len, row_len), bool),
  )


def split_rows(features, held_out: int):
  """(train, eval) features: the last `held_out` rows are for evaluation."""
  cut = len(features.mask) - held_out
  take = lambda s: dataclasses.replace(
    features,
    **{
      f.name: getattr(features, f.name)[s] for f in dataclasses.fields(features)
    },
  )
  return take(slice(0, cut)), take(slice(cut, None))


def train_heads(
  model,
  features,
  exit_layers,
  training: HeadTraining,
  workdir: pathlib.Path,
  tied_to: dict[str, str],
) -> ExitClassifiers:
  """`mlp` exits + linear scores at `exit_layers`, trained (or resumed)."""
  return exit_adapter.train_mlp_exits(
    model,
    features,
    exit_adapter.AdapterTraining(
      steps=training.steps,
      batch_size=training.batch_size,
      learning_rate=training.learning_rate,
    ),
    workdir,
    dict(tied_to, exit_layers=list(exit_layers), kind="mlp"),
    score_weight=1.0,
  )


def question_prompts(tokenizer, training: HeadTraining, data_dir=None):
  """([P, max_prompt] chat prompts of `training_questions`, [P] lengths);
  prompts longer than `training.max_prompt` are skipped."""
  ids = chat_ids(tokenizer, training_questions(training.questions, data_dir))
  ids = [i for i in ids if len(i) <= training.max_prompt]
  return pad_rows(ids, training.max_prompt)


def trained_heads(
  model,
  prompts,
  lengths,
  exit_layers,
  training: HeadTraining,
  workdir: pathlib.Path,
  log=print,
) -> tuple[ExitClassifiers, dict]:
  """Self-distillation data, training and agreement before/after.

  Args:
    model: the frozen decoder.
    prompts, lengths: [P, T] right-padded training prompts, [P] lengths.
    exit_layers: an exit (mlp + score) after each of these blocks.
    training: data and optimiser sizes.
    workdir: orbax checkpoints (resumed when present).
    log: progress printer.

  Returns:
    (the trained heads, a report: per-exit top-1 agreement with the final
    layer on held-out answer rows before (shared head alone) and after
    training, and the data sizes).
  """
  log(f"  generating {len(prompts)} greedy answers of {training.answer_tokens}")
  answers = self_answers(
    model, prompts, lengths, training.answer_tokens, training.generate_batch
  )
  features = answer_features(
    model, prompts, lengths, answers, exit_layers, training.row_len
  )
  train_rows, eval_rows = split_rows(features, max(len(features.mask) // 8, 1))
  log(
    f"  {len(train_rows.mask)} training rows, {len(eval_rows.mask)} held-out "
    f"rows of {training.row_len} answer positions"
  )
  tied_to = exit_adapter.fingerprint(model, answers)
  heads = train_heads(
    model, train_rows, exit_layers, training, workdir, tied_to
  )
  fresh = ExitClassifiers(heads.config, rngs=nnx.Rngs(0))
  before, after = (
    dynamax_train.exit_agreement(model, m, eval_rows) for m in (fresh, heads)
  )
  return heads, {
    "exit_layers": list(exit_layers),
    "agreement_before": [round(float(x), 4) for x in before],
    "agreement_after": [round(float(x), 4) for x in after],
    "train_rows": int(len(train_rows.mask)),
    "eval_rows": int(len(eval_rows.mask)),
    "row_len": training.row_len,
    "questions": int(len(prompts)),
  }
