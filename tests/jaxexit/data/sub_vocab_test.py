import numpy as np
import pytest

from jaxexit.data.sub_vocab import UNK, SubVocab


def test_round_trip_and_unknown_ids():
  vocab = SubVocab.from_corpus([[7, 3, 3], [40]], full_size=50, always=[1])
  assert vocab.kept.tolist() == [1, 3, 7, 40] and vocab.size == 5
  assert vocab.to_sub([3, 40, 1, 7]) == [2, 4, 1, 3]
  assert vocab.to_full(vocab.to_sub([3, 40, 1, 7])) == [3, 40, 1, 7]
  # Ids the corpus lacks (below, between and above the kept ones) are UNK,
  # and UNK maps back to -1.
  assert vocab.to_sub([0, 5, 49]) == [UNK] * 3
  assert vocab.to_full([UNK, 2]) == [-1, 3]
  assert vocab.unknown_share([[3, 5], [0, 1]]) == 0.5


def test_bad_input():
  with pytest.raises(ValueError, match="outside the full vocabulary"):
    SubVocab.from_corpus([[3, 60]], full_size=50)
  with pytest.raises(ValueError, match="strictly ascending"):
    SubVocab(np.array([3, 3]), 50)
  vocab = SubVocab.from_corpus([[3]], full_size=50)
  with pytest.raises(ValueError, match=r"sub ids must lie in \[0, 2\)"):
    vocab.to_full([2])
