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


def shuffled_batch_indices(step: int, num_examples: int, batch_size: int,
                           seed: int) -> Int64[np.ndarray, "B"]:
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
    raise ValueError(f"batch_size must be <= num_examples={num_examples}; "
                     f"got batch_size={batch_size}")
  epoch, i = divmod(step, num_examples // batch_size)
  perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
  return perm[i * batch_size:(i + 1) * batch_size].astype(np.int64)


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
