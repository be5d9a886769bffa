"""The fixed word-level vocabulary of the synthetic VQA sets: `VQAVocab`.

`jaxexit.data.shapes_vqa` (rendered shapes) and `jaxexit.data.cifar_vqa`
(templated CIFAR-10 questions) encode words with one vocabulary, so one model
reads both. Ids are positions in `VQAVocab.words`: the special tokens first
(`<pad>` = 0), then the question words, then the answer words. The lists below
are constants, so ids never change between runs or datasets.

Special tokens: `<pad>` right-pads questions, `<bos>` starts a prompt,
`<image>` is the placeholder of one image token, `<answer>` separates the
question from the answer, `<unk>` stands for unknown words when the caller
asks for it (by default an unknown word is an error).

Axes: `B` examples, `Q` question words (padded), `T` words of one text,
`A` answer words.
"""

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np
from jaxtyping import Int32

from jaxexit import checks

SPECIALS = ("<pad>", "<bos>", "<image>", "<answer>", "<unk>")
SHAPES = ("square", "circle", "triangle", "cross")
PLURALS = {
  "square": "squares",
  "circle": "circles",
  "triangle": "triangles",
  "cross": "crosses",
}
COLOURS = (
  "red",
  "green",
  "blue",
  "yellow",
  "magenta",
  "cyan",
  "white",
  "orange",
)
# Counts, grid rows and grid columns are written as the digits 0-9.
MAX_NUMBER = 9
NUMBERS = tuple(str(i) for i in range(MAX_NUMBER + 1))
YES, NO = "yes", "no"
# CIFAR-10 class names in `jaxexit.data.cifar` order (sorted).
CIFAR10_CLASSES = (
  "airplane",
  "automobile",
  "bird",
  "cat",
  "deer",
  "dog",
  "frog",
  "horse",
  "ship",
  "truck",
)
TEMPLATE_WORDS = (
  "how",
  "many",
  "shapes",
  "what",
  "colour",
  "is",
  "the",
  "shape",
  "at",
  "row",
  "column",
  "left",
  "right",
  "of",
  "above",
  "below",
  "there",
  "a",
  "an",
  "in",
  "image",
  "this",
  "?",
)
ANSWERS = NUMBERS + COLOURS + (YES, NO) + CIFAR10_CLASSES
WORDS = tuple(
  dict.fromkeys(
    SPECIALS + TEMPLATE_WORDS + SHAPES + tuple(PLURALS.values()) + ANSWERS
  )
)


def article(word: str) -> str:
  """ "an" before a vowel, else "a" (enough for the words above)."""
  return "an" if word[0] in "aeiou" else "a"


@dataclasses.dataclass(frozen=True)
class VQAVocab:
  """A fixed word-level vocabulary; `VQAVocab()` is the one both sets use.

  Attributes:
    words: every word, the id of a word being its position; starts with
      `SPECIALS`.
    answers: the words that can be answers (a subset of `words`).
  """

  words: tuple[str, ...] = WORDS
  answers: tuple[str, ...] = ANSWERS

  def __post_init__(self):
    if self.words[: len(SPECIALS)] != SPECIALS:
      raise ValueError(
        f"words must start with {SPECIALS}; got {self.words[: len(SPECIALS)]}"
      )
    repeated = sorted({w for w in self.words if self.words.count(w) > 1})
    if repeated:
      raise ValueError(f"words must be distinct; repeated: {repeated}")
    bad = [a for a in self.answers if a not in self._index or a in SPECIALS]
    if bad:
      raise ValueError(
        f"answers must be non-special words of the vocabulary; got {bad}"
      )

  @functools.cached_property
  def _index(self) -> dict[str, int]:
    return {w: i for i, w in enumerate(self.words)}

  def __len__(self) -> int:
    return len(self.words)

  @property
  def pad_id(self) -> int:
    return 0

  @property
  def bos_id(self) -> int:
    return self._index["<bos>"]

  @property
  def image_id(self) -> int:
    return self._index["<image>"]

  @property
  def sep_id(self) -> int:
    """Id of `<answer>`, the separator between question and answer."""
    return self._index["<answer>"]

  @property
  def unk_id(self) -> int:
    return self._index["<unk>"]

  @property
  def answer_ids(self) -> Int32[np.ndarray, "A"]:
    """[A] int32 ids of `answers`, in that order."""
    return np.asarray([self._index[a] for a in self.answers], np.int32)

  def id(self, word: str) -> int:
    """The id of `word`; ValueError naming it when it is unknown."""
    try:
      return self._index[word]
    except KeyError:
      raise ValueError(
        f"unknown word={word!r}; not in the {len(self)}-word VQA vocabulary"
      ) from None

  def encode(
    self, words: Sequence[str], *, allow_unknown: bool = False
  ) -> Int32[np.ndarray, "T"]:
    """Ids of `words`.

    Args:
      words: the words of one text.
      allow_unknown: map unknown words to `<unk>` instead of raising.

    Returns:
      [len(words)] int32 ids.

    Raises:
      ValueError: unknown words (and `allow_unknown` is False); the message
        lists them.
    """
    if isinstance(words, str):
      raise ValueError(
        f"words must be a sequence of words, not one string; "
        f"got {words!r} (split it first)"
      )
    unknown = [w for w in words if w not in self._index]
    if unknown and not allow_unknown:
      raise ValueError(f"unknown words {unknown} in {list(words)}")
    return np.asarray(
      [self._index.get(w, self.unk_id) for w in words], np.int32
    ).reshape(-1)

  def encode_padded(
    self, texts: Sequence[Sequence[str]], length: int
  ) -> tuple[Int32[np.ndarray, "B Q"], Int32[np.ndarray, "B"]]:
    """Encodes texts into one right-padded array.

    Args:
      texts: `B` word lists, each of at most `length` words.
      length: the padded length `Q`.

    Returns:
      ([B, Q] int32 ids padded with `pad_id`, [B] int32 lengths).

    Raises:
      ValueError: a text longer than `length` (named by its index), or an
        unknown word.
    """
    checks.positive_int("length", length)
    ids = np.full((len(texts), length), self.pad_id, np.int32)
    lens = np.zeros(len(texts), np.int32)
    for i, text in enumerate(texts):
      if len(text) > length:
        raise ValueError(
          f"text {i} has {len(text)} words > length={length}: {list(text)}"
        )
      ids[i, : len(text)] = self.encode(text)
      lens[i] = len(text)
    return ids, lens

  def decode(self, ids: Sequence[int] | np.ndarray) -> list[str]:
    """The words of `ids` (padding included; cut at the length first).

    Raises:
      ValueError: ids outside [0, len(vocab)); the message lists them.
    """
    flat = np.asarray(ids).reshape(-1)
    bad = flat[(flat < 0) | (flat >= len(self))]
    if bad.size:
      raise ValueError(f"ids {bad.tolist()} outside [0, {len(self)})")
    return [self.words[i] for i in flat]
