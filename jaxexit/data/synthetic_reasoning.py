"""Procedural arithmetic word problems with overthinking reasoning traces.

LYNX's small reasoning LM (spec `llm_exits.md` §2; issue "LYNX" 6b) is
trained from scratch on these. Each problem is a start value x, an odd
gain a and 1 to `max_steps` rounds of the rule "if x is even, keep half;
if odd, get a more" (a Collatz-like map: each round is one table lookup,
but which one depends on the value the previous round produced, so the
answer has to be worked out round by round). The trace works the rounds
out one by one, states the answer, then re-checks it 1 to `max_checks`
times before the final `\\boxed{}`. Overthinking exists by construction:
after "so the answer is N ." every later token is redundant, and a forced
exit there answers correctly, while a forced exit before the last round
must guess the rounds not yet written out. (A first version summed the
question's gains and losses: a 4-layer LM learned to add them up without
the trace, so forced exits were right at 99.8 % of cues, also before the
answer was stated, and no exit could be premature; experiments/lynx
README.) Cue words ("hmm", "wait") occur both before the answer is
settled ("hmm ," before every round after the first whose value is odd)
and at the start of every re-check, so the word alone does not tell a
probe whether exiting is safe. The early cues follow a rule the LM can
learn, not a coin flip: greedy decoding never emits a token whose
probability is only 0.3, and with random early cues (a second version)
the greedy rollouts held no early cue at all, so every forced exit was
right. The step count is drawn uniformly, so some traces
settle early and some late.

Text is whitespace-separated words; `WordTokenizer` maps each word to one
id (numbers 0..`max_value` are single tokens), so a cue is one token:

  prompt  <bos> Q: Ann has 7 coins . each round : if even , Ann keeps half
          ; if odd , Ann gets 5 more . after 2 rounds how many coins ?
          <think>
  trace   7 odd + 5 = 12 . hmm , 12 even / 2 = 6 . so the answer is 6 .
          wait , let me check . 7 odd + 5 = 12 . 12 even / 2 = 6 . yes 6
          . </think> Final Answer: \\boxed{ 6 }

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
  "keeps",
  "half",
  "more",
  "each",
  "round",
  "rounds",
  "after",
  "if",
  "even",
  "odd",
  ":",
  ";",
  "/",
  "how",
  "many",
  "?",
  ".",
  ",",
  "+",
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
    min_steps, max_steps: rounds per problem (uniform).
    max_value: every value stays in [1, max_value] (the start is at most
      max_value - max_operand).
    max_operand: the gain is odd, in [1, max_operand].
    max_checks: re-checks after the answer (uniform in [1, max_checks]).
  """

  min_steps: int = 1
  max_steps: int = 6
  max_value: int = 40
  max_operand: int = 9
  max_checks: int = 2

  def __post_init__(self):
    checks.positive_int("min_steps", self.min_steps)
    checks.positive_int("max_steps", self.max_steps, minimum=self.min_steps)
    checks.positive_int("max_operand", self.max_operand)
    checks.positive_int("max_value", self.max_value, minimum=self.max_operand)
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
    steps: rounds (the difficulty).
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


def _rounds_text(start: int, gain: int, rounds: int) -> tuple[list[str], int]:
  value, parts = start, []
  for _ in range(rounds):
    if value % 2:
      parts.append(f"{value} odd + {gain} = {value + gain} .")
      value += gain
    else:
      parts.append(f"{value} even / 2 = {value // 2} .")
      value //= 2
  return parts, value


def make_problem(
  seed: int, index: int, cfg: SyntheticReasoningConfig
) -> SyntheticProblem:
  """Problem `index` of stream `seed` (a pure function of both)."""
  rng = np.random.default_rng([seed, index])
  steps = int(rng.integers(cfg.min_steps, cfg.max_steps + 1))
  name, item = rng.choice(NAMES), rng.choice(ITEMS)
  gain = int(rng.choice(np.arange(1, cfg.max_operand + 1, 2)))
  start = int(rng.integers(1, cfg.max_value - cfg.max_operand + 1))
  question = (
    f"Q: {name} has {start} {item} . each round : if even , {name} keeps "
    f"half ; if odd , {name} gets {gain} more . after {steps} "
    f"{'round' if steps == 1 else 'rounds'} how many {item} ? <think>"
  )
  parts, answer = _rounds_text(start, gain, steps)
  trace = []
  for i, part in enumerate(parts):
    if i and int(part.split()[0]) % 2:  # hesitate before an odd round
      trace.append("hmm ,")
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
