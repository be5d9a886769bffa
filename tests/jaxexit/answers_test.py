"""Answer extraction and grading (LYNX's graders)."""

import pytest

from jaxexit import answers


@pytest.mark.parametrize(
  "text, gold, ok",
  [
    ("so 3 + 4 = 7.\n#### 7", "7", True),
    ("The total is \\boxed{1,234} dollars", "1234", True),
    ("first 5, then 12, finally 72.", "72", True),
    ("first 5, then 12, finally 72.", "12", False),
    ("\\boxed{0.5}", "1/2", True),
    ("nothing numeric", "3", False),
    ("Final Answer: \\boxed{-4", "-4", True),  # cut-off completion
  ],
)
def test_number_grader(text, gold, ok):
  assert answers.is_correct(text, gold, "number") is ok


@pytest.mark.parametrize(
  "text, gold, ok",
  [
    ("\\boxed{\\frac{1}{2}}", "\\dfrac{1}{2}", True),
    ("\\boxed{0.5}", "\\frac12", True),
    ("\\boxed{x = 5}", "5", True),
    ("\\boxed{90^\\circ}", "90", True),
    (
      "\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}",
      "(3,\\frac{\\pi}{2})",
      True,
    ),
    ("\\boxed{10\\text{ cm}}", "10", True),
    ("\\boxed{\\sqrt{2}}", "\\sqrt{3}", False),
    ("no box, answer 5", "5", False),
  ],
)
def test_math_grader(text, gold, ok):
  assert answers.is_correct(text, gold, "math") is ok


@pytest.mark.parametrize(
  "text, want",
  [
    ("I think the answer is (B).", "B"),
    ("A bank? No. Answer: C", "C"),
    ("\\boxed{D}", "D"),
    ("Apples and Bananas", None),
  ],
)
def test_letter_extraction(text, want):
  assert answers.extract_letter(text) == want


def test_nested_boxes_and_bad_grader():
  assert answers.last_boxed("a \\boxed{1} b \\boxed{\\frac{2}{3}}") == (
    "\\frac{2}{3}"
  )
  with pytest.raises(ValueError, match="grader"):
    answers.is_correct("1", "1", "exact")
