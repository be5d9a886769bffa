"""The answer corpus and the Mamba distilled from the Transformer's answers.

The answer corpus: chat prompts (the transformer backbone's `prompt`) of
TruthfulQA questions outside the evaluation sample and of GSM8K and
CommonsenseQA training questions, each with the transformer backbone's
greedy answer (`jaxexit.decoding.answers.greedy_answers`). It is generated
once and cached as JSON beside the runs (keyed by the teacher, the
questions and the answer length). The exit classifiers of both backbones
train on it (`Config.feature_text="answers"`): for the Transformer these
are its own answers, the text decoding meets.

The distilled Mamba (`BackboneSpec.source="distilled"`) is trained from
scratch on prompt + answer documents of that corpus (sequence-level
distillation: next-token CE on the teacher's greedy tokens), with the
teacher's tokenizer restricted to the ids the corpus uses
(`jaxexit.data.sub_vocab`): SmolLM2's 49 152-id output projection would
cost more than the whole small Mamba. Its answers are compared with the
teacher's on the evaluation prompts (`agreement`).
"""

import dataclasses
import json
import pathlib

import numpy as np
from flax import nnx

from experiments.dynamax.backbones import Backbone
from experiments.dynamax.configs import BackboneSpec, Config
from experiments.dynamax.evaluate import accuracies
from experiments.dynamax.summary import agreement_summary
from jaxexit.data import location, text
from jaxexit.data.sub_vocab import SubVocab
from jaxexit.decoding.answers import greedy_answers
from jaxexit.models.mamba import MambaConfig, MambaLM
from jaxexit.models.mamba2 import Mamba2LM
from jaxexit.results_store import write_json_atomic
from jaxexit.text_metrics import rouge_l
from jaxexit.train import fingerprint as fp_lib
from jaxexit.train.lm import train_causal_lm


@dataclasses.dataclass(frozen=True)
class AnswerCorpus:
  """Questions, their chat prompts and the teacher's greedy answers.

  Attributes:
    questions: the question texts.
    prompts: the teacher's token ids of each chat prompt.
    answers: the teacher's greedy answer ids (up to its first EOS).
  """

  questions: list[str]
  prompts: list[list[int]]
  answers: list[list[int]]

  def documents(self, bos_id: int, eos_id: int) -> list[list[int]]:
    """Prompt + answer per question, without a leading `bos_id` and a
    trailing `eos_id` (`jaxexit.data.text.pack_documents` adds both)."""
    docs = []
    for prompt, answer in zip(self.prompts, self.answers):
      doc = list(prompt) + list(answer)
      doc = doc[1:] if doc and doc[0] == bos_id else doc
      docs.append(doc[:-1] if doc and doc[-1] == eos_id else doc)
    return docs


def _train_questions(source: str, count: int, data_dir, seed: int):
  """`count` shuffled training questions of GSM8K or CommonsenseQA."""
  if count == 0:
    return []
  rows = text.read_jsonl(
    location.require_file(source, "train", data_dir=data_dir)
  )
  order = np.random.default_rng(seed).permutation(len(rows))[:count]
  if source == "gsm8k":
    return [rows[i]["question"] for i in order]
  return [
    rows[i]["question"]["stem"]
    + " Choices: "
    + ", ".join(c["text"] for c in rows[i]["question"]["choices"])
    for i in order
  ]


def corpus_questions(
  cfg: Config, other_truthfulqa: list[str], data_dir, seed: int
) -> list[str]:
  """The corpus's questions: TruthfulQA outside the evaluation sample
  (`other_truthfulqa`, already shuffled), then GSM8K and CommonsenseQA."""
  n = cfg.answers_truthfulqa
  questions = list(other_truthfulqa if n < 0 else other_truthfulqa[:n])
  questions += _train_questions("gsm8k", cfg.answers_gsm8k, data_dir, seed)
  questions += _train_questions(
    "commonsenseqa", cfg.answers_csqa, data_dir, seed
  )
  return questions


def cached_answers(
  path: pathlib.Path,
  teacher: Backbone,
  questions: list[str],
  *,
  max_new_tokens: int,
  batch: int,
  max_prompt: int | None = None,
  progress=None,
) -> AnswerCorpus:
  """The teacher's greedy answers to `questions`, from `path` when it
  holds them for the same teacher, questions and lengths, else generated
  and written there. Questions whose prompt is longer than `max_prompt`
  tokens are left out."""
  key = {
    "teacher": teacher.description,
    "questions": fp_lib.fingerprint_array(np.array(questions)),
    "max_new_tokens": max_new_tokens,
    "max_prompt": max_prompt,
  }
  prompts = [teacher.encode(teacher.prompt(q)) for q in questions]
  kept = [i for i, p in enumerate(prompts) if len(p) <= (max_prompt or 1e9)]
  questions = [questions[i] for i in kept]
  prompts = [prompts[i] for i in kept]
  if path.exists():
    stored = json.loads(path.read_text())
    if stored.get("key") == key:
      return AnswerCorpus(questions, stored["prompts"], stored["answers"])
  answers = greedy_answers(
    teacher.model,
    prompts,
    max_new_tokens=max_new_tokens,
    eos_id=teacher.eos_id,
    batch=batch,
    progress=progress,
  )
  path.parent.mkdir(parents=True, exist_ok=True)
  write_json_atomic(path, {"key": key, "prompts": prompts, "answers": answers})
  return AnswerCorpus(questions, prompts, answers)


def distilled_backbone(
  spec: BackboneSpec,
  teacher: Backbone,
  corpus: AnswerCorpus,
  workdir: pathlib.Path,
  *,
  seed: int,
  progress=None,
) -> tuple[Backbone, SubVocab]:
  """Trains `spec.arch` from scratch on `corpus` (resumable in `workdir`).

  Returns:
    The backbone (the teacher's prompts and tokenizer through the corpus's
    sub-vocabulary; `corpus` = its training documents in its own ids) and
    that sub-vocabulary.
  """
  docs = corpus.documents(teacher.bos_id, teacher.eos_id)
  vocab = SubVocab.from_corpus(
    docs, teacher.model.vocab_size, always=(teacher.bos_id, teacher.eos_id)
  )
  bos, eos = vocab.to_sub([teacher.bos_id, teacher.eos_id])
  sub_docs = [vocab.to_sub(d) for d in docs]
  order = np.random.default_rng(seed).permutation(len(sub_docs))
  rows = text.pack_documents(
    [sub_docs[i] for i in order], spec.seq_len, bos_id=bos, eos_id=eos
  )
  arch = dataclasses.replace(spec.arch, vocab_size=vocab.size)
  cls = MambaLM if isinstance(arch, MambaConfig) else Mamba2LM
  model, loss = train_causal_lm(
    cls(arch, rngs=nnx.Rngs(seed)),
    rows,
    steps=spec.steps,
    batch_size=spec.batch_size,
    learning_rate=spec.learning_rate,
    workdir=workdir,
    seed=seed,
    progress=progress,
    fingerprint={"arch": arch, "vocab": fp_lib.fingerprint_array(vocab.kept)},
  )
  epochs = spec.steps * spec.batch_size / len(rows)
  description = (
    f"{cls.__name__} trained from scratch ({arch.num_layers} blocks, "
    f"d={arch.d_model}, state {arch.d_state}) on the teacher's greedy "
    f"answers to {len(docs)} chat prompts ({rows.size} tokens, "
    f"{epochs:.1f} epochs: {spec.steps} steps of {spec.batch_size}x"
    f"{spec.seq_len}); the teacher's tokenizer restricted to the "
    f"{vocab.size - 1} ids of that corpus (+ unknown); final train loss "
    f"{loss:.3f} nats/token"
  )

  def decode(ids):
    return teacher.decode([i for i in vocab.to_full(ids) if i >= 0])

  backbone = Backbone(
    model=model,
    encode=lambda s: vocab.to_sub(teacher.encode(s)),
    decode=decode,
    prompt=teacher.prompt,
    bos_id=bos,
    eos_id=eos,
    description=description,
    corpus=sub_docs,
  )
  return backbone, vocab


def agreement(
  student: list[list[int]],
  teacher: list[list[int]],
  student_texts: list[str],
  teacher_texts: list[str],
) -> dict[str, list]:
  """Per question: the student's answer against the teacher's.

  Args:
    student: the student's answer ids, mapped to the teacher's ids.
    teacher: the teacher's answer ids (up to its EOS) on the same prompts.
    student_texts, teacher_texts: the decoded answers.

  Returns:
    {"tokens": [[matched, teacher answer length]] (the teacher's answer
    tokens the student reproduces at the same position), "rouge_l": ROUGE-L
    F1 of the texts, "exact": texts equal}, one entry per question.
  """
  tokens = [
    [sum(a == b for a, b in zip(s, t)), len(t)]
    for s, t in zip(student, teacher)
  ]
  return {
    "tokens": tokens,
    "rouge_l": [rouge_l(s, t) for s, t in zip(student_texts, teacher_texts)],
    "exact": [
      float(s.strip() == t.strip())
      for s, t in zip(student_texts, teacher_texts)
    ],
  }


def teacher_answers(path, cfg: Config, teacher: Backbone, items, vocab) -> dict:
  """The teacher's answers on the evaluation prompts (cached at `path`),
  their ROUGE accuracy and the share of prompt ids the sub-vocabulary
  lacks; `to_full` maps the student's ids to the teacher's."""
  got = cached_answers(
    path,
    teacher,
    [item.question for item in items],
    max_new_tokens=cfg.max_new_tokens,
    batch=cfg.answer_batch,
  )
  strip = lambda a: a[:-1] if a and a[-1] == teacher.eos_id else a
  answers = [strip(a) for a in got.answers]
  texts = [teacher.decode(a) for a in answers]
  return {
    "answer_ids": answers,
    "answers": texts,
    "accuracy": accuracies(texts, items),
    "prompt_unknown_share": vocab.unknown_share(got.prompts),
    "to_full": vocab.to_full,
  }


def student_agreement(teacher: dict, full: dict) -> dict:
  """The student's full-model answers (`full`: the full record's
  per-question data) against `teacher_answers`; drops the latter's
  `to_full` and keeps the per-question values and their intervals."""
  to_full = teacher.pop("to_full")
  per_q = agreement(
    [to_full(a) for a in full["answer_ids"]],
    teacher.pop("answer_ids"),
    full["answers"],
    teacher["answers"],
  )
  both = {"teacher_accuracy": teacher.pop("accuracy"), **per_q}
  return {
    "per_question": both,
    # A student that ignores the question gives one answer to all.
    "distinct_answers": len(set(full["answers"])),
    "teacher_distinct_answers": len(set(teacher["answers"])),
    **agreement_summary(both),
  }
