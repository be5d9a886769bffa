"""Reasoning evaluation sets with gold answers: GSM8K, MATH-500, AIME 2024,
CommonsenseQA.

Each loads as a list of `Problem` (id, question, gold answer, how to grade
it) from its official layout under the data dir (`jaxexit.data.location`;
flag `--data-dir`, env `JAXEXIT_DATA`):

  gsm8k/test.jsonl              question, answer ("... #### 72")
  math500/test.jsonl            problem, solution, answer, subject, level
  aime2024/test.jsonl           id, problem, solution, answer, url
  commonsenseqa/dev_rand_split.jsonl (or train_rand_split.jsonl)
                                id, question {stem, choices [{label, text}]},
                                answerKey

A missing file raises `DataNotFoundError` naming the path tried and how to
obtain it; a record without a needed field raises a ValueError naming the
file, the line and the fields expected.
"""

import dataclasses
import os

from jaxexit import checks
from jaxexit.data import location
from jaxexit.data.text import read_jsonl

# eval name -> (dataset, default split, fields every record needs, grader)
SETS = {
  "gsm8k": ("gsm8k", "test", ("question", "answer"), "number"),
  "math500": (
    "math500",
    "test",
    ("problem", "solution", "answer", "subject", "level"),
    "math",
  ),
  "aime2024": (
    "aime2024",
    "test",
    ("id", "problem", "solution", "answer", "url"),
    "number",
  ),
  "csqa": ("commonsenseqa", "dev", ("id", "question", "answerKey"), "letter"),
}


@dataclasses.dataclass(frozen=True)
class Problem:
  """One evaluation problem.

  Attributes:
    id: a stable id (the record's own, or "<set>-<record number>").
    question: the prompt text (CSQA: the stem and lettered choices).
    answer: the gold answer as a string (a number, a LaTeX expression or a
      choice letter).
    grader: "number", "math" or "letter" (`jaxexit.answers.is_correct`).
  """

  id: str
  question: str
  answer: str
  grader: str


def _problem(name: str, n: int, row: dict, grader: str) -> Problem:
  if name == "gsm8k":
    gold = row["answer"].split("####")[-1].strip().replace(",", "")
    return Problem(f"gsm8k-{n}", row["question"], gold, grader)
  if name == "csqa":
    q = row["question"]
    choices = " ".join(f"({c['label']}) {c['text']}" for c in q["choices"])
    text = f"{q['stem']}\nChoices: {choices}"
    return Problem(str(row["id"]), text, str(row["answerKey"]), grader)
  return Problem(
    str(row.get("id", f"{name}-{n}")),
    row["problem"],
    str(row["answer"]),
    grader,
  )


def load_problems(
  name: str,
  *,
  split: str | None = None,
  data_dir: str | os.PathLike | None = None,
) -> list[Problem]:
  """The problems of eval set `name` (a key of `SETS`), in file order.

  Args:
    name: gsm8k, math500, aime2024 or csqa.
    split: the dataset split (default: its evaluation split).
    data_dir: overrides `--data-dir` / `JAXEXIT_DATA`.
  """
  checks.one_of("eval set", name, sorted(SETS))
  dataset, default_split, needed, grader = SETS[name]
  path = location.require_file(
    dataset, split or default_split, data_dir=data_dir
  )
  rows = read_jsonl(path, needed)
  return [_problem(name, n, row, grader) for n, row in enumerate(rows, 1)]
