import re

import pytest

from jaxexit import answers
from jaxexit.data.synthetic_reasoning import (
  EXIT_CUE,
  SyntheticReasoningConfig,
  WordTokenizer,
  make_problem,
  make_problems,
)

CFG = SyntheticReasoningConfig()


def _replay(question: str) -> int:
  """The answer recomputed from the question's words alone."""
  words = question.split()
  value = int(words[words.index("has") + 1])
  gain = int(words[words.index("gets") + 1])
  for _ in range(int(words[words.index("after") + 1])):
    value = value // 2 if value % 2 == 0 else value + gain
  return value


def test_answers_follow_the_question_and_stay_in_range():
  for p in make_problems(3, 0, 300, CFG):
    assert int(p.answer) == _replay(p.question)
    values = [int(w) for w in re.findall(r"\d+", p.trace)]
    assert all(1 <= v <= CFG.max_value for v in values)
    assert answers.is_correct(p.trace, p.answer, p.grader)
    assert CFG.min_steps <= p.steps <= CFG.max_steps


def test_cues_fall_before_and_after_the_settled_answer():
  """Overthinking by construction: every trace re-checks after "so the
  answer is", and some traces say a cue before the answer is settled."""
  early = 0
  for p in make_problems(0, 0, 300, CFG):
    words = p.trace.split()
    assert words[p.settled - 6 : p.settled] == [
      "so",
      "the",
      "answer",
      "is",
      p.answer,
      ".",
    ]
    after = words[p.settled :]
    assert after[0] == "wait" and after[-6:] == [
      *EXIT_CUE.split(),
      p.answer,
      "}",
    ]
    early += any(w in ("hmm", "wait") for w in words[: p.settled])
  assert 0.2 < early / 300 < 0.95


def test_problems_are_a_pure_function_of_seed_and_index():
  assert make_problem(5, 17, CFG) == make_problem(5, 17, CFG)
  assert make_problem(5, 17, CFG) != make_problem(6, 17, CFG)
  assert make_problems(5, 10, 3, CFG)[0] == make_problem(5, 10, CFG)


def test_word_tokenizer_round_trips_and_names_unknown_words():
  tok = WordTokenizer(CFG.max_value)
  p = make_problem(0, 0, CFG)
  text = f"{p.question} {p.trace}"
  assert tok.decode(tok.encode(text)) == text
  assert tok.decode_token(tok.encode("wait")[0]) == " wait"
  with pytest.raises(ValueError, match="'banana'"):
    tok.encode("Ann has banana")
  assert tok.vocab_size == len(set(tok.words))


def test_bad_config_names_the_value():
  with pytest.raises(ValueError, match="max_steps"):
    SyntheticReasoningConfig(min_steps=3, max_steps=2)
  with pytest.raises(ValueError, match="max_checks"):
    SyntheticReasoningConfig(max_checks=0)
