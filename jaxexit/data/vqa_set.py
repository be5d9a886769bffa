"""`VQASet`: images with one word-level question and one-word answer each.

The type returned by `jaxexit.data.shapes_vqa.make_shapes_vqa` and
`jaxexit.data.cifar_vqa`. Questions are right-padded to `QUESTION_LEN` words
in every set, so models compile one shape for all of them; a prompt is
assembled by the model's input code (e.g. `<bos>`, N `<image>` tokens, the
question, `<answer>`), and the answer is scored by exact match of one word.

Axes: `B` examples, `H`, `W` image height and width (here not "heads"),
`Q` question words (padded).
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from jaxtyping import Int32, UInt8

from jaxexit.data.vqa_vocab import VQAVocab

# Longest template: "what colour is the shape at row 2 column 3 ?" (11 words).
QUESTION_LEN = 12


@dataclasses.dataclass(frozen=True)
class VQASet:
  """A visual question answering set in host memory.

  Attributes:
    images: [B, H, W, 3] uint8 RGB images.
    question_ids: [B, Q] int32 word ids, right-padded with `vocab.pad_id`.
    question_lens: [B] int32 number of words of each question (>= 1).
    answer_ids: [B] int32 id of each one-word answer (in `vocab.answer_ids`).
    question_types: [B] int32 positions in `type_names`.
    type_names: the question types, e.g. ("count", "colour", ...).
    vocab: the vocabulary of the ids.
    scenes: per-example scene description, or None. `make_shapes_vqa` puts
      its `ShapesScenes` (the object list of each image) here; it must have
      `take(idx)`.
  """

  images: UInt8[np.ndarray, "B H W 3"]
  question_ids: Int32[np.ndarray, "B Q"]
  question_lens: Int32[np.ndarray, "B"]
  answer_ids: Int32[np.ndarray, "B"]
  question_types: Int32[np.ndarray, "B"]
  type_names: tuple[str, ...]
  vocab: VQAVocab
  scenes: Any = None

  def __post_init__(self):
    num = len(self.images)
    shapes = {
      "question_ids": self.question_ids.shape[:1],
      "question_lens": self.question_lens.shape,
      "answer_ids": self.answer_ids.shape,
      "question_types": self.question_types.shape,
    }
    bad = {k: v for k, v in shapes.items() if v != (num,)}
    if bad:
      raise ValueError(
        f"every field needs {num} rows for images "
        f"{self.images.shape}; got {bad}"
      )
    width = self.question_ids.shape[1]
    if num and not (
      self.question_lens.min() >= 1 and self.question_lens.max() <= width
    ):
      raise ValueError(
        f"question_lens must lie in [1, {width}]; got range "
        f"[{self.question_lens.min()}, "
        f"{self.question_lens.max()}]"
      )
    padding = np.arange(width) >= self.question_lens[:, None]  # [B, Q]
    if np.any(self.question_ids[padding] != self.vocab.pad_id):
      raise ValueError("question_ids must hold pad_id after each length")
    not_answer = ~np.isin(self.answer_ids, self.vocab.answer_ids)
    if not_answer.any():
      raise ValueError(
        f"answer_ids must be answer words; got ids "
        f"{np.unique(self.answer_ids[not_answer]).tolist()}"
      )
    types = self.question_types
    if num and not (types.min() >= 0 and types.max() < len(self.type_names)):
      raise ValueError(
        f"question_types must lie in [0, "
        f"{len(self.type_names)}); got range "
        f"[{types.min()}, {types.max()}]"
      )

  def __len__(self) -> int:
    return len(self.images)

  def take(self, idx: np.ndarray | slice | Sequence[int]) -> "VQASet":
    """The examples at `idx` (indices, a boolean mask or a slice)."""
    if not isinstance(idx, slice):
      idx = np.asarray(idx)
      idx = (
        np.flatnonzero(idx)
        if idx.dtype == bool
        else idx.astype(np.int64).reshape(-1)
      )
    scenes = None if self.scenes is None else self.scenes.take(idx)
    return VQASet(
      self.images[idx],
      self.question_ids[idx],
      self.question_lens[idx],
      self.answer_ids[idx],
      self.question_types[idx],
      self.type_names,
      self.vocab,
      scenes,
    )

  def question(self, i: int) -> list[str]:
    """The words of question `i`, without padding."""
    return self.vocab.decode(self.question_ids[i, : self.question_lens[i]])

  def answer(self, i: int) -> str:
    """The answer word of example `i`."""
    return self.vocab.words[self.answer_ids[i]]

  def type_name(self, i: int) -> str:
    """The question type of example `i`."""
    return self.type_names[self.question_types[i]]
