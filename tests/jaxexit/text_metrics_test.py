import pytest

from jaxexit.text_metrics import reference_accuracy, rouge_l, words


def test_rouge_l_known_values():
  assert words("The cat, SAT!") == ["the", "cat", "sat"]
  assert rouge_l("the cat sat", "the cat sat") == 1.0
  assert rouge_l("", "the cat") == 0.0
  # LCS("the cat sat on", "the dog sat") = "the sat": P = 2/4, R = 2/3.
  assert rouge_l("the cat sat on", "the dog sat") == pytest.approx(4 / 7)


def test_reference_accuracy():
  assert reference_accuracy(
    "seeds pass through you",
    ["The seeds pass through"],
    ["You grow watermelons"],
  )
  assert not reference_accuracy(
    "you grow watermelons", ["seeds pass"], ["You grow watermelons"]
  )
  with pytest.raises(ValueError, match="correct and incorrect"):
    reference_accuracy("x", [], ["y"])
