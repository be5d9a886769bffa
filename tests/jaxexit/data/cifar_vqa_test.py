"""Tests for jaxexit.data.cifar_vqa: templated CIFAR-10 questions."""

import dataclasses
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from jaxexit.data import cifar_vqa, location
from jaxexit.data.cifar import ImageSplit
from jaxexit.data.vqa_set import QUESTION_LEN
from jaxexit.data.vqa_vocab import CIFAR10_CLASSES
from tests.tiers import slow

# /work/main/tests/jaxexit/data/cifar_vqa_test.py -> /work/shared/data
SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
REAL_DATA = Path(os.environ.get(location.ENV_VAR) or SHARED_DATA)


def _split(num=300, class_names=CIFAR10_CLASSES) -> ImageSplit:
  """Image i has every pixel equal to i % 256 in channel 0 and i // 256 in
  channel 1, so an example's image names its source row."""
  idx = np.arange(num)
  images = np.zeros((num, 32, 32, 3), np.uint8)
  images[..., 0] = (idx % 256)[:, None, None]
  images[..., 1] = (idx // 256)[:, None, None]
  labels = (idx * 7 % len(class_names)).astype(np.int32)
  return ImageSplit(images, labels, tuple(class_names))


def _source_rows(data) -> np.ndarray:
  pixel = data.images[:, 0, 0].astype(int)
  return pixel[:, 0] + 256 * pixel[:, 1]


def _check_answers(data, split: ImageSplit) -> None:
  labels = split.labels[_source_rows(data)]
  for i in range(len(data)):
    words, truth = data.question(i), split.class_names[labels[i]]
    if data.type_name(i) == "classify":
      assert words == ["what", "is", "in", "the", "image", "?"]
      assert data.answer(i) == truth
    else:
      named = words[3]
      article = "an" if named[0] in "aeiou" else "a"
      assert words == ["is", "this", article, named, "?"]
      assert data.answer(i) == ("yes" if named == truth else "no")


def test_answers_are_right_and_balanced():
  split = _split()
  data = cifar_vqa.cifar_vqa(split, seed=1)
  assert len(data) == 300 and data.type_names == cifar_vqa.TYPE_NAMES
  assert data.images.shape == (300, 32, 32, 3)
  assert data.question_ids.shape == (300, QUESTION_LEN)
  assert data.scenes is None
  _check_answers(data, split)
  np.testing.assert_array_equal(np.sort(_source_rows(data)), np.arange(300))
  assert np.bincount(data.question_types).tolist() == [150, 150]
  verify = [data.answer(i) for i in range(300) if data.type_name(i) == "verify"]
  assert Counter(verify) == {"yes": 75, "no": 75}
  classes = Counter(
    data.answer(i) for i in range(300) if data.type_name(i) == "classify"
  )
  assert set(classes) == set(CIFAR10_CLASSES)


def test_articles():
  data = cifar_vqa.cifar_vqa(_split(400), seed=0)
  questions = {" ".join(data.question(i)) for i in range(len(data))}
  assert "is this an airplane ?" in questions
  assert "is this an automobile ?" in questions
  assert "is this a truck ?" in questions


def test_subset_and_seed():
  split = _split()
  a = cifar_vqa.cifar_vqa(split, seed=3, num_examples=41)
  b = cifar_vqa.cifar_vqa(split, seed=3, num_examples=41)
  c = cifar_vqa.cifar_vqa(split, seed=4, num_examples=41)
  assert len(a) == 41 and len(set(_source_rows(a))) == 41
  np.testing.assert_array_equal(a.images, b.images)
  np.testing.assert_array_equal(a.question_ids, b.question_ids)
  np.testing.assert_array_equal(a.answer_ids, b.answer_ids)
  assert not np.array_equal(a.images, c.images)
  _check_answers(a, split)
  assert np.ptp(np.bincount(a.question_types)) <= 1


@pytest.mark.parametrize(
  "kw,match",
  [
    ({"num_examples": 0}, "num_examples=0"),
    ({"num_examples": 301}, "num_examples=301"),
    ({"seed": -2}, "seed=-2"),
  ],
)
def test_bad_arguments(kw, match):
  with pytest.raises(ValueError, match=match):
    cifar_vqa.cifar_vqa(_split(), **kw)


def test_bad_class_names():
  with pytest.raises(ValueError, match=r"\['apple', 'aquarium_fish'\]"):
    cifar_vqa.cifar_vqa(_split(10, ("apple", "aquarium_fish", "cat")))
  with pytest.raises(ValueError, match="at least 2 classes"):
    cifar_vqa.cifar_vqa(_split(10, ("cat",)))


def test_missing_data_dir(tmp_path):
  with pytest.raises(location.DataNotFoundError, match="cifar10"):
    cifar_vqa.load_cifar_vqa(
      "test", data_dir=tmp_path, source="files", use_bundled=False
    )


def test_bundled_subset_uses_all_it_has_and_says_so(capsys):
  split = dataclasses.replace(_split(300), subset_of=3000)
  data = cifar_vqa.cifar_vqa(split, num_examples=2000)
  assert len(data) == 300
  assert "num_examples=2000 exceeds the 300-image" in capsys.readouterr().err
  with pytest.raises(ValueError, match="num_examples=3001"):
    cifar_vqa.cifar_vqa(split, num_examples=3001)


@slow
@pytest.mark.skipif(
  not (REAL_DATA / "cifar10" / "cifar10_test_jpg.tar.gz").is_file(),
  reason="real CIFAR-10 archive not available",
)
def test_real_cifar10_test_split(tmp_path):
  data = cifar_vqa.load_cifar_vqa(
    "test",
    seed=0,
    num_examples=1000,
    data_dir=REAL_DATA,
    cache_dir=tmp_path,
    source="files",
  )
  assert data.images.shape == (1000, 32, 32, 3)
  assert data.images.dtype == np.uint8
  assert np.bincount(data.question_types).tolist() == [500, 500]
  classes = Counter(
    data.answer(i) for i in range(1000) if data.type_name(i) == "classify"
  )
  assert set(classes) == set(CIFAR10_CLASSES)  # a shuffled, not sorted, draw
  verify = Counter(
    data.answer(i) for i in range(1000) if data.type_name(i) == "verify"
  )
  assert verify == {"yes": 250, "no": 250}
