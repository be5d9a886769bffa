"""Procedural arithmetic word problems with overthinking reasoning traces.

LYNX's small reasoning LM (spec `llm_exits.md` §2; issue "LYNX" 6b) is
trained from scratch on these. Each problem is a start value and 1 to
`max_steps` gains or losses; the trace works the steps out one by one,
states the answer, then re-checks it 1 to `max_checks` times before the
final `\\boxed{}`. Overthinking exists by construction: after "so the
answer is N ." every later token is redundant, and a forced exit there
answers correctly, while a forced exit before the last step cannot know
the answer. Cue words ("hmm", "wait") occur both before the answer is
settled (with probability `cue_rate` before each step after the first) and
at the start of every re-check, so the word alone does not tell a probe
whether exiting is safe. The step count is drawn uniformly, so some traces
settle early and some late.

Text is whitespace-separated words; `WordTokenizer` maps each word to one
id (numbers 0..`max_value` are single tokens), so a cue is one token:

  prompt  <bos> Q: Ann has 7 coins . Ann gets 5 . Ann loses 3 . how many
          coins ? <think>
  trace   7 + 5 = 12 . hmm , 12 - 3 = 9 . so the answer is 9 . wait , let
          me check . 7 + 5 = 12 . 12 - 3 = 9 . yes 9 . </think> Final
          Answer: \\boxed{ 9 }

Problems are a pure function of (seed, index), so train, calibration and
evaluation sets drawn from disjoint index ranges never overlap.
"""

import dataclasses

import numpy as np

from jaxexit import checks

NAMES = ("Ann", "Ben", "Cara", "Dev", "Eli", "Fay")
ITEMS = ("coins", "apples", "cards", "stamps", "shells")
EXIT_CUE = "</think> Final Answer: \\boxed{"
SPECIALS = ("<pad>", "<bos>", "<eos>")
_WORDS = (
  "Q:",
  "has",
  "gets",
  "loses",
  "how",
  "many",
  "?",
  ".",
  ",",
  "+",
  "-",
  "=",
  "<think>",
  "</think>",
  "Final",
  "Answer:",
  "\\boxed{",
  "}",
  "so",
  "the",
  "answer",
  "is",
  "hmm",
  "wait",
  "let",
  "me",
  "check",
  "again",
  "yes",
)


@dataclasses.dataclass(frozen=True)
class SyntheticReasoningConfig:
  """How problems are drawn.

  Attributes:
    min_steps, max_steps: gains/losses per problem (uniform).
    max_value: every running value stays in [0, max_value].
    max_operand: each gain/loss is in [1, max_operand].
    cue_rate: P(a "hmm ," or "wait ," before each step after the first).
    max_checks: re-checks after the answer (uniform in [1, max_checks]).
  """

  min_steps: int = 1
  max_steps: int = 6
  max_value: int = 40
  max_operand: int = 9
  cue_rate: float = 0.3
  max_checks: int = 2

  def __post_init__(self):
    checks.positive_int("min_steps", self.min_steps)
    checks.positive_int("max_steps", self.max_steps, minimum=self.min_steps)
    checks.positive_int("max_operand", self.max_operand)
    checks.positive_int("max_value", self.max_value, minimum=self.max_operand)
    checks.in_range("cue_rate", self.cue_rate, 0.0, 1.0)
    checks.positive_int("max_checks", self.max_checks)


@dataclasses.dataclass(frozen=True)
class SyntheticProblem:
  """One problem and its reference trace.

  Attributes:
    id: "synthetic-<seed>-<index>".
    question: the prompt text after "<bos>" (ends with "<think>").
    trace: the reference reasoning and final answer (ends with "}"; a
      language model's rows add "<eos>", `jaxexit.data.text.pack_documents`).
    answer: the gold answer, a number as text.
    steps: gains/losses (the difficulty).
    settled: words of `trace` up to and including the first statement of
      the answer ("so the answer is N ."): a cue after it is redundant.
  """

  id: str
  question: str
  trace: str
  answer: str
  steps: int
  settled: int

  grader = "number"


class WordTokenizer:
  """One id per whitespace-separated word of the synthetic language.

  `decode_token(i)` is the piece a cue detector sees (" word"), so the
  official substring semantics find "wait" at the token "wait".
  """

  def __init__(self, max_value: int):
    words = [*SPECIALS, *_WORDS, *NAMES, *ITEMS]
    words += [str(i) for i in range(max_value + 1)]
    self.words = tuple(words)
    self._ids = {w: i for i, w in enumerate(self.words)}
    self.pad_id, self.bos_id, self.eos_id = 0, 1, 2

  @property
  def vocab_size(self) -> int:
    return len(self.words)

  def encode(self, text: str) -> list[int]:
    """Ids of `text`'s words; raises on a word outside the vocabulary."""
    try:
      return [self._ids[w] for w in text.split()]
    except KeyError as e:
      raise ValueError(
        f"word {e.args[0]!r} is not in the synthetic vocabulary"
      ) from None

  def decode_token(self, i: int) -> str:
    return " " + self.words[int(i)]

  def decode(self, ids) -> str:
    """Text of `ids`, stopping before the first <pad>."""
    out = []
    for i in ids:
      if int(i) == self.pad_id:
        break
      out.append(self.words[int(i)])
    return " ".join(out)


def _steps_text(start: int, ops: list[int]) -> tuple[list[str], int]:
  value, parts = start, []
  for op in ops:
    new = value + op
    sign = "+" if op > 0 else "-"
    parts.append(f"{value} {sign} {abs(op)} = {new} .")
    value = new
  return parts, value


def make_problem(
  seed: int, index: int, cfg: SyntheticReasoningConfig
) -> SyntheticProblem:
  """Problem `index` of stream `seed` (a pure function of both)."""
  rng = np.random.default_rng([seed, index])
  steps = int(rng.integers(cfg.min_steps, cfg.max_steps + 1))
  name, item = rng.choice(NAMES), rng.choice(ITEMS)
  value = int(rng.integers(1, cfg.max_value // 2 + 1))
  start, ops = value, []
  for _ in range(steps):
    gains = min(cfg.max_operand, cfg.max_value - value)
    losses = min(cfg.max_operand, value)
    if losses and (not gains or rng.random() < 0.5):
      op = -int(rng.integers(1, losses + 1))
    else:
      op = int(rng.integers(1, gains + 1))
    ops.append(op)
    value += op
  words = [f"Q: {name} has {start} {item} ."]
  for op in ops:
    verb = "gets" if op > 0 else "loses"
    words.append(f"{name} {verb} {abs(op)} .")
  question = " ".join([*words, f"how many {item} ? <think>"])
  parts, answer = _steps_text(start, ops)
  trace = []
  for i, part in enumerate(parts):
    if i and rng.random() < cfg.cue_rate:
      trace.append(str(rng.choice(["hmm ,", "wait ,"])))
    trace.append(part)
  trace.append(f"so the answer is {answer} .")
  settled = len(" ".join(trace).split())
  for c in range(int(rng.integers(1, cfg.max_checks + 1))):
    opener = "wait , let me check ." if c == 0 else "hmm , check again ."
    trace += [opener, *parts, f"yes {answer} ."]
  trace.append(f"{EXIT_CUE} {answer} }}")
  return SyntheticProblem(
    id=f"synthetic-{seed}-{index}",
    question=question,
    trace=" ".join(trace),
    answer=str(answer),
    steps=steps,
    settled=settled,
  )


def make_problems(
  seed: int, start: int, count: int, cfg: SyntheticReasoningConfig
) -> list[SyntheticProblem]:
  """Problems `start .. start + count - 1` of stream `seed`."""
  checks.positive_int("count", count)
  checks.positive_int("start", start, minimum=0)
  return [make_problem(seed, i, cfg) for i in range(start, start + count)]
