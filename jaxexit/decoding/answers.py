"""Greedy answers of many prompts, in batches of similar length.

`greedy_answers` runs `generate_full` over a list of prompts of any
lengths: prompts are sorted by length, padded to a multiple of `bucket`
tokens (one compiled program per padded width) and decoded `batch` at a
time (the last batch of a width is filled with copies of its first row, so
every call of a width has one shape). Batching does not change the tokens:
`generate_full` masks the padding, and each row's tokens equal its batch-1
run (tested).

Axes: B batch, T prompt tokens, N generated tokens.
"""

from collections.abc import Sequence

import numpy as np

from jaxexit import checks
from jaxexit.decoding.full import generate_full
from jaxexit.train.progress import ProgressBar


def pad_prompts(
  prompts: Sequence[Sequence[int]], width: int
) -> tuple[np.ndarray, np.ndarray]:
  """([P, width] right-padded int32 ids, [P] lengths).

  Raises:
    ValueError: a prompt is empty or longer than `width`.
  """
  lengths = np.array([len(p) for p in prompts], np.int32)
  if len(prompts) and (lengths.min() < 1 or lengths.max() > width):
    raise ValueError(
      f"prompt lengths must lie in [1, width={width}]; got "
      f"{lengths.min()}..{lengths.max()}"
    )
  rows = np.zeros((len(prompts), width), np.int32)
  for row, seq in zip(rows, prompts):
    row[: len(seq)] = seq
  return rows, lengths


def cut_after(
  tokens: Sequence[int] | np.ndarray, eos_id: int | None
) -> list[int]:
  """`tokens` up to and including the first `eos_id` (all without one)."""
  tokens = [int(t) for t in tokens]
  if eos_id is not None and eos_id in tokens:
    return tokens[: tokens.index(eos_id) + 1]
  return tokens


def greedy_answers(
  backbone,
  prompts: Sequence[Sequence[int]],
  *,
  max_new_tokens: int,
  eos_id: int | None,
  batch: int = 16,
  bucket: int = 32,
  progress: bool | None = None,
) -> list[list[int]]:
  """Each prompt's greedy continuation, cut after its first `eos_id`.

  Args:
    backbone: a `DecoderBackbone`.
    prompts: P token-id lists (any lengths ≥ 1).
    max_new_tokens: N, tokens generated per prompt.
    eos_id: a row stops after this id (None: never).
    batch: rows per `generate_full` call.
    bucket: padded widths are multiples of it.
    progress: progress bar (None: only on a terminal).

  Returns:
    P answers in the order of `prompts`, each at most N ids.
  """
  checks.positive_int("batch", batch)
  checks.positive_int("bucket", bucket)
  if not prompts:
    return []
  order = np.argsort([len(p) for p in prompts], kind="stable")
  answers: list[list[int] | None] = [None] * len(prompts)
  with ProgressBar(len(prompts), enabled=progress) as bar:
    for start in range(0, len(order), batch):
      idx = order[start : start + batch]
      width = -(-max(len(prompts[i]) for i in idx) // bucket) * bucket
      rows, lengths = pad_prompts([prompts[i] for i in idx], width)
      fill = batch - len(idx)
      if fill:
        rows = np.concatenate([rows, np.repeat(rows[:1], fill, 0)])
        lengths = np.concatenate([lengths, np.repeat(lengths[:1], fill)])
      tokens = np.asarray(
        generate_full(
          backbone,
          rows,
          lengths,
          max_new_tokens=max_new_tokens,
          eos_id=eos_id,
        )
      )
      for i, row in zip(idx, tokens):
        answers[i] = cut_after(row, eos_id)
      bar.update(len(idx))
  return answers
