"""Reasoning eval sets load from their official layouts under the data dir
(tiny fixtures written here for MATH-500 and AIME 2024, which are not
staged)."""

import json
from pathlib import Path

import pytest

from jaxexit import answers
from jaxexit.data import location, reasoning

# The staged data beside the repository (../shared/data), as CI has it.
SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"


def _write(path, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_math500_and_aime_fixtures(tmp_path):
  _write(
    tmp_path / "math500" / "test.jsonl",
    [
      {
        "problem": "What is $\\frac{1}{2} + \\frac{1}{4}$?",
        "solution": "... $\\boxed{\\frac{3}{4}}$",
        "answer": "\\frac{3}{4}",
        "subject": "Prealgebra",
        "level": 1,
      }
    ],
  )
  _write(
    tmp_path / "aime2024" / "test.jsonl",
    [
      {
        "id": "2024-I-1",
        "problem": "Find n.",
        "solution": "n = 204",
        "answer": "204",
        "url": "https://artofproblemsolving.com/",
      }
    ],
  )
  (math,) = reasoning.load_problems("math500", data_dir=tmp_path)
  assert math.grader == "math" and math.answer == "\\frac{3}{4}"
  assert answers.is_correct("so \\boxed{0.75}", math.answer, math.grader)
  (aime,) = reasoning.load_problems("aime2024", data_dir=tmp_path)
  assert (aime.id, aime.answer, aime.grader) == ("2024-I-1", "204", "number")


def test_staged_gsm8k_and_csqa_have_gold_answers():
  gsm = reasoning.load_problems("gsm8k", data_dir=SHARED_DATA)
  assert len(gsm) == 1319 and all(p.answer for p in gsm)
  assert all(answers._to_float(p.answer) is not None for p in gsm)
  csqa = reasoning.load_problems("csqa", data_dir=SHARED_DATA)
  assert len(csqa) == 1221
  assert {p.answer for p in csqa} == set("ABCDE")
  assert "(A)" in csqa[0].question


def test_missing_set_and_missing_field(tmp_path):
  with pytest.raises(location.DataNotFoundError, match="math500"):
    reasoning.load_problems("math500", data_dir=tmp_path)
  _write(tmp_path / "aime2024" / "test.jsonl", [{"id": "x", "problem": "p"}])
  with pytest.raises(ValueError, match=r"test.jsonl:1 lacks the field"):
    reasoning.load_problems("aime2024", data_dir=tmp_path)
  with pytest.raises(ValueError, match="eval set"):
    reasoning.load_problems("math501")
