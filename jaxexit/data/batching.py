"""Example indices for training (shuffled epochs) and evaluation (padded).

Training batches are a pure function of the step, so a run resumed from a
checkpoint at step `s` sees exactly the batches it would have seen: epoch
`e = s // (num_examples // batch_size)` is a permutation drawn from
`np.random.default_rng([seed, e])`, cut into `batch_size` chunks, and the
last `num_examples % batch_size` examples of each permutation are dropped.

Evaluation batches cover every example once with one static batch size (one
compiled shape): the last batch is padded by repeating the final index, and
`EvalBatch.num_valid` says how many leading rows are real.

Axes: `B` examples of a batch.
"""

from typing import NamedTuple

import numpy as np
from jaxtyping import Int64

from jaxexit import checks


def shuffled_batch_indices(
  step: int, num_examples: int, batch_size: int, seed: int
) -> Int64[np.ndarray, "B"]:
  """Indices of the training batch at `step` (shuffled epochs, drop-last).

  Args:
    step: global step, >= 0.
    num_examples: size of the dataset.
    batch_size: examples per batch, in [1, num_examples].
    seed: non-negative seed; with `step` it fixes the batch.

  Returns:
    [batch_size] int64 indices into the dataset, distinct within an epoch.

  Raises:
    ValueError: a negative step or seed, a non-positive size, or
      `batch_size > num_examples`.
  """
  checks.positive_int("step", step, minimum=0)
  checks.positive_int("num_examples", num_examples)
  checks.positive_int("batch_size", batch_size)
  checks.positive_int("seed", seed, minimum=0)
  if batch_size > num_examples:
    raise ValueError(
      f"batch_size must be <= num_examples={num_examples}; "
      f"got batch_size={batch_size}"
    )
  epoch, i = divmod(step, num_examples // batch_size)
  perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
  return perm[i * batch_size : (i + 1) * batch_size].astype(np.int64)


class EvalBatch(NamedTuple):
  """One evaluation batch: unpack as `indices, num_valid = batch`.

  Attributes:
    indices: [batch_size] int64 example indices; rows from `num_valid` on
      repeat the dataset's final index.
    num_valid: how many leading rows are real examples.
  """

  indices: Int64[np.ndarray, "B"]
  num_valid: int


def eval_batches(num_examples: int, batch_size: int) -> list[EvalBatch]:
  """Consecutive batches of one size that cover every example once.

  Args:
    num_examples: size of the dataset.
    batch_size: rows per batch (may exceed `num_examples`).

  Returns:
    `ceil(num_examples / batch_size)` batches, in order; keep the first
    `num_valid` rows of each batch's outputs.

  Raises:
    ValueError: a non-positive size.
  """
  checks.positive_int("num_examples", num_examples)
  checks.positive_int("batch_size", batch_size)
  batches = []
  for start in range(0, num_examples, batch_size):
    indices = np.arange(start, start + batch_size, dtype=np.int64)
    num_valid = min(batch_size, num_examples - start)
    batches.append(EvalBatch(np.minimum(indices, num_examples - 1), num_valid))
  return batches


class LengthBucketedBatches:
  """Training batches of similar length: a pure function of the step.

  Examples are grouped by the smallest bucket width that holds their
  length; each epoch shuffles every bucket (`default_rng([seed, epoch])`),
  cuts it into `batch_size` chunks (dropping each bucket's remainder) and
  shuffles the chunks' order. A batch is then padded only to its bucket's
  width, so short examples cost short sequences, and there is one compiled
  shape per width. The number of batches per epoch is the same in every
  epoch, so `batch(step)` is defined for any step (resumable).

  Attributes:
    widths: [K] sorted bucket widths (the last one ≥ the longest example).
    batches_per_epoch: batches in one epoch.
  """

  def __init__(self, lengths, batch_size: int, seed: int, widths=(16, 32, 64)):
    """Groups examples by length.

    Args:
      lengths: [N] true lengths (tokens) of the examples.
      batch_size: examples per batch.
      seed: non-negative seed; with the step it fixes the batch.
      widths: increasing bucket widths; lengths above the last are an error.

    Raises:
      ValueError: no bucket holds a full batch, a length above the last
        width, or a bad size.
    """
    lengths = np.asarray(lengths)
    checks.positive_int("batch_size", batch_size)
    checks.positive_int("seed", seed, minimum=0)
    self.widths = tuple(sorted(int(w) for w in widths))
    if lengths.size and lengths.max() > self.widths[-1]:
      raise ValueError(
        f"an example has length {int(lengths.max())} > the "
        f"largest bucket width {self.widths[-1]}"
      )
    bucket = np.searchsorted(self.widths, lengths)  # first width >= length
    self._members = [
      np.flatnonzero(bucket == k) for k in range(len(self.widths))
    ]
    self._seed = seed
    self._batch_size = batch_size
    self.batches_per_epoch = sum(len(m) // batch_size for m in self._members)
    if self.batches_per_epoch == 0:
      raise ValueError(
        f"no length bucket holds batch_size={batch_size} "
        f"examples (bucket sizes "
        f"{[len(m) for m in self._members]})"
      )
    self._epoch_cache: tuple[int, list] | None = None

  def _epoch(self, epoch: int) -> list[tuple[np.ndarray, int]]:
    if self._epoch_cache is None or self._epoch_cache[0] != epoch:
      rng = np.random.default_rng([self._seed, epoch])
      chunks = []
      for width, members in zip(self.widths, self._members):
        perm = rng.permutation(members)
        for i in range(len(perm) // self._batch_size):
          chunks.append(
            (perm[i * self._batch_size : (i + 1) * self._batch_size], width)
          )
      order = rng.permutation(len(chunks))
      self._epoch_cache = (epoch, [chunks[i] for i in order])
    return self._epoch_cache[1]

  def batch(self, step: int) -> tuple[Int64[np.ndarray, "B"], int]:
    """`(indices [batch_size], width)` of the batch at `step`."""
    checks.positive_int("step", step, minimum=0)
    epoch, i = divmod(step, self.batches_per_epoch)
    indices, width = self._epoch(epoch)[i]
    return indices.astype(np.int64), width


def length_bucketed_eval_batches(
  lengths, batch_size: int, widths=(16, 32, 64)
) -> list[tuple[EvalBatch, int]]:
  """Evaluation batches grouped by length: `[(EvalBatch, width), ...]`.

  Every example appears once; within a width, batches have one static size
  (the last one padded by repeating its final index, `num_valid` real rows),
  so there is one compiled shape per width.

  Args:
    lengths: [N] true lengths.
    batch_size: rows per batch.
    widths: increasing bucket widths (the last ≥ the longest example).
  """
  lengths = np.asarray(lengths)
  checks.positive_int("batch_size", batch_size)
  widths = tuple(sorted(int(w) for w in widths))
  if lengths.size and lengths.max() > widths[-1]:
    raise ValueError(
      f"an example has length {int(lengths.max())} > the "
      f"largest bucket width {widths[-1]}"
    )
  bucket = np.searchsorted(widths, lengths)
  out = []
  for k, width in enumerate(widths):
    members = np.flatnonzero(bucket == k)
    for start in range(0, len(members), batch_size):
      chunk = members[start : start + batch_size]
      padded = np.concatenate(
        [chunk, np.full(batch_size - len(chunk), chunk[-1])]
      )
      out.append((EvalBatch(padded.astype(np.int64), len(chunk)), width))
  return out
