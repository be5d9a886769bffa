"""Tests for jaxexit.data.batching: shuffled epochs and padded eval batches."""

import numpy as np
import pytest

from jaxexit.data import batching


def _reference(step, num_examples, batch_size, seed):
  """The inline recipe of experiments/palbert_glue/run.py `_batch_fn`."""
  epoch, i = divmod(step, num_examples // batch_size)
  perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
  return perm[i * batch_size : (i + 1) * batch_size]


@pytest.mark.parametrize("step", [0, 1, 3, 4, 9, 1000])
def test_matches_the_palbert_recipe(step):
  got = batching.shuffled_batch_indices(step, 103, 25, seed=7)
  assert got.dtype == np.int64 and got.shape == (25,)
  np.testing.assert_array_equal(got, _reference(step, 103, 25, 7))


def test_epoch_is_a_permutation_drop_last():
  epoch0 = np.concatenate(
    [batching.shuffled_batch_indices(s, 10, 3, 0) for s in range(3)]
  )
  assert len(set(epoch0.tolist())) == 9  # one example dropped
  epoch1 = np.concatenate(
    [batching.shuffled_batch_indices(s, 10, 3, 0) for s in range(3, 6)]
  )
  assert not np.array_equal(epoch0, epoch1)
  other_seed = batching.shuffled_batch_indices(0, 10, 3, 1)
  assert not np.array_equal(epoch0[:3], other_seed)


def test_full_batch_each_step():
  idx = batching.shuffled_batch_indices(5, 4, 4, 0)
  np.testing.assert_array_equal(np.sort(idx), np.arange(4))


@pytest.mark.parametrize(
  "args,match",
  [
    ((0, 4, 5, 0), "batch_size=5"),
    ((-1, 4, 2, 0), "step=-1"),
    ((0, 4, 0, 0), "batch_size=0"),
    ((0, 0, 1, 0), "num_examples=0"),
    ((0, 4, 2, -3), "seed=-3"),
  ],
)
def test_shuffled_errors(args, match):
  with pytest.raises(ValueError, match=match):
    batching.shuffled_batch_indices(*args)


def test_eval_batches_cover_everything_once():
  batches = batching.eval_batches(10, 4)
  assert [b.num_valid for b in batches] == [4, 4, 2]
  for indices, _ in batches:
    assert indices.dtype == np.int64 and indices.shape == (4,)
  np.testing.assert_array_equal(batches[-1].indices, [8, 9, 9, 9])
  real = np.concatenate([b.indices[: b.num_valid] for b in batches])
  np.testing.assert_array_equal(real, np.arange(10))


def test_eval_batches_exact_and_oversized():
  assert [b.num_valid for b in batching.eval_batches(8, 4)] == [4, 4]
  (only,) = batching.eval_batches(2, 5)
  np.testing.assert_array_equal(only.indices, [0, 1, 1, 1, 1])
  assert only.num_valid == 2


def test_eval_batches_errors():
  with pytest.raises(ValueError, match="num_examples=0"):
    batching.eval_batches(0, 4)
  with pytest.raises(ValueError, match="batch_size=0"):
    batching.eval_batches(4, 0)
