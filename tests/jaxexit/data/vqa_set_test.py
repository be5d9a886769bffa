"""Tests for jaxexit.data.vqa_set: the VQASet container and its checks."""

import jaxtyping
import numpy as np
import pytest

from jaxexit.data.vqa_set import QUESTION_LEN, VQASet
from jaxexit.data.vqa_vocab import VQAVocab


def _set(**overrides) -> VQASet:
  vocab = VQAVocab()
  ids, lens = vocab.encode_padded(
    [
      ["how", "many", "circles", "?"],
      ["is", "there", "a", "red", "square", "?"],
      ["?"],
    ],
    QUESTION_LEN,
  )
  fields = dict(
    images=np.arange(3 * 4 * 4 * 3, dtype=np.uint8).reshape(3, 4, 4, 3),
    question_ids=ids,
    question_lens=lens,
    answer_ids=vocab.encode(["2", "no", "yes"]),
    question_types=np.asarray([0, 1, 1], np.int32),
    type_names=("count", "exists"),
    vocab=vocab,
  )
  return VQASet(**{**fields, **overrides})


def test_accessors():
  data = _set()
  assert len(data) == 3
  assert data.question(1) == ["is", "there", "a", "red", "square", "?"]
  assert data.answer(0) == "2" and data.type_name(1) == "exists"


class _Scenes:
  def __init__(self, ids):
    self.ids = np.asarray(ids)

  def take(self, idx):
    return _Scenes(self.ids[idx])


@pytest.mark.parametrize(
  "idx", [[2, 0], np.array([True, False, True]), slice(0, 3, 2)]
)
def test_take(idx):
  data = _set(scenes=_Scenes([10, 11, 12]))
  part = data.take(idx)
  want = [2, 0] if isinstance(idx, list) else [0, 2]
  np.testing.assert_array_equal(part.images, data.images[want])
  assert [part.answer(i) for i in range(2)] == [data.answer(i) for i in want]
  np.testing.assert_array_equal(part.scenes.ids, np.asarray([10, 11, 12])[want])
  assert _set().take([1]).scenes is None


def test_bad_sets():
  vocab = VQAVocab()
  # Under the test suite's jaxtyping hook the annotation check may fire first.
  with pytest.raises((ValueError, jaxtyping.TypeCheckError)):
    _set(answer_ids=vocab.encode(["2", "no"]))
  with pytest.raises(ValueError, match="question_lens must lie in"):
    _set(question_lens=np.asarray([4, 6, 0], np.int32))
  ids = _set().question_ids.copy()
  ids[2, 3] = vocab.id("red")
  with pytest.raises(ValueError, match="pad_id after each length"):
    _set(question_ids=ids)
  with pytest.raises(ValueError, match=f"ids \\[{vocab.id('how')}\\]"):
    _set(answer_ids=vocab.encode(["2", "how", "yes"]))
  with pytest.raises(ValueError, match="question_types must lie in"):
    _set(question_types=np.asarray([0, 2, 1], np.int32))
