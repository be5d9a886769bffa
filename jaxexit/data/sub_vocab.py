"""A tokenizer's vocabulary restricted to the ids a corpus uses.

A small LM trained from scratch on text from a large-vocabulary tokenizer
(e.g. SmolLM2's 49 152 ids) spends most of its parameters and of its output
projection on ids the corpus never contains. `SubVocab` keeps the ids that
occur (plus any named ones) and maps every other id to one unknown id, so
the model's vocabulary is the corpus's.

Sub id 0 is the unknown id; sub id k ≥ 1 is the k-th kept id in ascending
order.
"""

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from jaxexit import checks

UNK = 0


@dataclasses.dataclass(frozen=True)
class SubVocab:
  """The kept ids of a full vocabulary of `full_size` ids.

  Attributes:
    kept: [K] int64 full ids, strictly ascending, each in [0, full_size).
    full_size: size of the full vocabulary.
  """

  kept: np.ndarray
  full_size: int

  def __post_init__(self):
    checks.positive_int("full_size", self.full_size)
    kept = np.asarray(self.kept, np.int64)
    if kept.ndim != 1 or kept.size == 0:
      raise ValueError(f"kept must be a non-empty [K] array; got {kept.shape}")
    if np.any(np.diff(kept) <= 0) or kept[0] < 0 or kept[-1] >= self.full_size:
      raise ValueError(
        "kept must be strictly ascending ids in [0, full_size="
        f"{self.full_size}); got {kept[:8].tolist()}..."
      )
    object.__setattr__(self, "kept", kept)

  @classmethod
  def from_corpus(
    cls,
    docs: Iterable[Sequence[int]],
    full_size: int,
    always: Sequence[int] = (),
  ) -> "SubVocab":
    """The ids occurring in `docs`, plus `always` (e.g. BOS and EOS)."""
    seen = {int(i) for doc in docs for i in doc} | {int(i) for i in always}
    bad = sorted(i for i in seen if not 0 <= i < full_size)
    if bad:
      raise ValueError(
        f"ids {bad[:8]} lie outside the full vocabulary [0, {full_size})"
      )
    return cls(np.array(sorted(seen), np.int64), full_size)

  @property
  def size(self) -> int:
    """Sub-vocabulary size: the kept ids and the unknown id."""
    return len(self.kept) + 1

  def to_sub(self, ids: Sequence[int] | np.ndarray) -> list[int]:
    """Full ids → sub ids (ids not kept → `UNK`)."""
    ids = np.asarray(ids, np.int64)
    pos = np.searchsorted(self.kept, ids)
    pos = np.minimum(pos, len(self.kept) - 1)
    hit = self.kept[pos] == ids
    return np.where(hit, pos + 1, UNK).tolist()

  def to_full(self, ids: Sequence[int] | np.ndarray) -> list[int]:
    """Sub ids → full ids (`UNK` → -1, which no tokenizer decodes).

    Raises:
      ValueError: an id outside [0, size).
    """
    ids = np.asarray(ids, np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= self.size):
      raise ValueError(
        f"sub ids must lie in [0, {self.size}); got min {ids.min()}, "
        f"max {ids.max()}"
      )
    full = self.kept[np.maximum(ids - 1, 0)]
    return np.where(ids == UNK, -1, full).tolist()

  def unknown_share(self, docs: Sequence[Sequence[int]]) -> float:
    """Share of the full ids of `docs` that are not kept (0 when empty)."""
    total = sum(len(d) for d in docs)
    unknown = sum(self.to_sub(d).count(UNK) for d in docs if len(d))
    return unknown / total if total else 0.0
