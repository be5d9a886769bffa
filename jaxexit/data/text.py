"""Text the machine has, for language-model training and LM evaluation.

* `lm_texts`: GSM8K questions with their worked solutions and CommonsenseQA
  questions with their choices and answers, as plain documents (the corpus
  the DYNAMAX cpu preset trains its Mamba LM on). GSM8K's calculator
  annotations `<<48/2=24>>` are removed.
* `load_truthfulqa`: the 817 TruthfulQA questions with their best, correct
  and incorrect answers (Lin et al., 2022; the generation CSV).
* `ByteTokenizer`: UTF-8 bytes as ids 0…255 plus BOS/EOS, for models
  trained from scratch.
* `pack_documents`: token lists → fixed-length [n, T] training rows.

Files come through `jaxexit.data.location` (flag `--data-dir`, env
`JAXEXIT_DATA`).
"""

import csv
import dataclasses
import json
import os
import re
from collections.abc import Sequence

import numpy as np

from jaxexit import checks
from jaxexit.data import location

LM_SOURCES = ("gsm8k", "commonsenseqa")
_CALCULATOR = re.compile(r"<<[^>]*>>")


def read_jsonl(path, needed: Sequence[str] = ()) -> list[dict]:
  """The records of a JSON-lines file (blank lines skipped).

  Raises:
    ValueError: naming `path:line` for a line that is not JSON or lacks a
      field of `needed`.
  """
  rows = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{n} is not valid JSON: {err}") from None
      missing = [k for k in needed if k not in row]
      if missing:
        raise ValueError(
          f"{path}:{n} lacks the field(s) {missing}; every record needs "
          f"{list(needed)}"
        )
      rows.append(row)
  return rows


def _gsm8k(row: dict) -> str:
  answer = _CALCULATOR.sub("", row["answer"]).replace("####", "Answer:")
  return f"Question: {row['question']}\n{answer}"


def _commonsenseqa(row: dict) -> str:
  q = row["question"]
  choices = " ".join(f"({c['label']}) {c['text']}" for c in q["choices"])
  answer = next(
    c["text"] for c in q["choices"] if c["label"] == row["answerKey"]
  )
  return f"Question: {q['stem']}\nChoices: {choices}\nAnswer: {answer}"


def lm_texts(
  sources: Sequence[str] = LM_SOURCES,
  *,
  split: str = "train",
  data_dir: str | os.PathLike | None = None,
) -> list[str]:
  """Documents of `sources` (each one of `LM_SOURCES`), in file order."""
  format_row = {"gsm8k": _gsm8k, "commonsenseqa": _commonsenseqa}
  texts = []
  for source in sources:
    checks.one_of("source", source, LM_SOURCES)
    path = location.require_file(source, split, data_dir=data_dir)
    texts += [format_row[source](row) for row in read_jsonl(path)]
  return texts


@dataclasses.dataclass(frozen=True)
class TruthfulQAItem:
  """One TruthfulQA question."""

  question: str
  best_answer: str
  correct_answers: tuple[str, ...]
  incorrect_answers: tuple[str, ...]
  category: str


def load_truthfulqa(
  data_dir: str | os.PathLike | None = None,
) -> list[TruthfulQAItem]:
  """All questions of `TruthfulQA.csv`."""
  path = location.require_file("truthfulqa", "test", data_dir=data_dir)
  with open(path, encoding="utf-8", newline="") as f:
    rows = list(csv.DictReader(f))
  needed = {
    "Question",
    "Best Answer",
    "Correct Answers",
    "Incorrect Answers",
    "Category",
  }
  if not rows or not needed <= set(rows[0]):
    raise ValueError(f"{path} lacks the TruthfulQA columns {sorted(needed)}")
  split = lambda s: tuple(a.strip() for a in s.split(";") if a.strip())
  return [
    TruthfulQAItem(
      r["Question"],
      r["Best Answer"],
      split(r["Correct Answers"]),
      split(r["Incorrect Answers"]),
      r["Category"],
    )
    for r in rows
  ]


class ByteTokenizer:
  """UTF-8 bytes → ids 0…255; BOS = 256, EOS = 257."""

  vocab_size = 258
  bos_id = 256
  eos_id = 257

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def decode(self, ids: Sequence[int]) -> str:
    return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode(
      "utf-8", errors="replace"
    )


def pack_documents(
  documents: Sequence[Sequence[int]], seq_len: int, *, bos_id: int, eos_id: int
) -> np.ndarray:
  """Concatenates `BOS doc EOS` for every document and cuts [n, seq_len] rows.

  The incomplete tail is dropped. Raises if not even one row fits.
  """
  checks.positive_int("seq_len", seq_len, minimum=2)
  stream = []
  for doc in documents:
    stream += [bos_id, *doc, eos_id]
  n = len(stream) // seq_len
  if n == 0:
    raise ValueError(
      f"{len(stream)} tokens do not fill one row of seq_len={seq_len}"
    )
  return np.asarray(stream[: n * seq_len], np.int32).reshape(n, seq_len)
