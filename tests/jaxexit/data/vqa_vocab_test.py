"""Tests for jaxexit.data.vqa_vocab: the fixed VQA vocabulary."""

import numpy as np
import pytest

from jaxexit.data import vqa_vocab
from jaxexit.data.vqa_vocab import VQAVocab


def test_specials_come_first_with_fixed_ids():
  vocab = VQAVocab()
  assert vocab.words[:5] == ("<pad>", "<bos>", "<image>", "<answer>", "<unk>")
  assert (
    vocab.pad_id,
    vocab.bos_id,
    vocab.image_id,
    vocab.sep_id,
    vocab.unk_id,
  ) == (0, 1, 2, 3, 4)
  # Ids are part of trained checkpoints: appending is fine, reordering not.
  assert len(vocab) == 66
  assert vocab.id("how") == 5 and vocab.id("?") == 27
  assert vocab.id("square") == 28 and vocab.id("0") == 36
  assert vocab.id("truck") == len(vocab) - 1


def test_every_dataset_word_is_in_the_vocabulary():
  vocab = VQAVocab()
  for word in (
    vqa_vocab.SHAPES
    + tuple(vqa_vocab.PLURALS.values())
    + vqa_vocab.COLOURS
    + vqa_vocab.NUMBERS
    + vqa_vocab.CIFAR10_CLASSES
    + vqa_vocab.TEMPLATE_WORDS
    + ("yes", "no")
  ):
    assert vocab.words[vocab.id(word)] == word
  assert len(set(vocab.words)) == len(vocab)


def test_answer_ids():
  vocab = VQAVocab()
  ids = vocab.answer_ids
  assert ids.dtype == np.int32 and len(ids) == len(vqa_vocab.ANSWERS)
  assert vocab.decode(ids) == list(vqa_vocab.ANSWERS)
  assert {"yes", "no", "0", "6", "red", "cyan", "airplane"} <= set(
    vocab.answers
  )
  assert not set(vocab.decode(ids)) & set(vqa_vocab.SPECIALS)
  assert "how" not in vocab.answers and "?" not in vocab.answers


def test_encode_decode_round_trip():
  vocab = VQAVocab()
  words = "is the red circle left of the blue square ?".split()
  ids = vocab.encode(words)
  assert ids.dtype == np.int32 and ids.shape == (10,)
  assert vocab.decode(ids) == words
  assert vocab.encode([]).shape == (0,)


def test_unknown_words_are_named():
  vocab = VQAVocab()
  with pytest.raises(ValueError, match=r"\['purple', 'dodecagon'\]"):
    vocab.encode(["is", "the", "purple", "dodecagon", "?"])
  with pytest.raises(ValueError, match="word='purple'"):
    vocab.id("purple")
  ids = vocab.encode(["a", "purple", "square"], allow_unknown=True)
  np.testing.assert_array_equal(
    ids, [vocab.id("a"), vocab.unk_id, vocab.id("square")]
  )
  with pytest.raises(ValueError, match="not one string"):
    vocab.encode("how many")


def test_decode_rejects_bad_ids():
  vocab = VQAVocab()
  with pytest.raises(ValueError, match=r"ids \[-1, 66\]"):
    vocab.decode([0, -1, 5, 66])


def test_encode_padded():
  vocab = VQAVocab()
  ids, lens = vocab.encode_padded([["how", "many", "circles", "?"], ["?"]], 6)
  assert ids.shape == (2, 6) and ids.dtype == np.int32
  np.testing.assert_array_equal(lens, [4, 1])
  assert vocab.decode(ids[0, :4]) == ["how", "many", "circles", "?"]
  assert np.all(ids[0, 4:] == vocab.pad_id) and np.all(ids[1, 1:] == 0)
  with pytest.raises(ValueError, match="text 1 has 3 words > length=2"):
    vocab.encode_padded([["?"], ["a", "b", "c"]], 2)


def test_article():
  assert vqa_vocab.article("airplane") == "an"
  assert vqa_vocab.article("orange") == "an"
  assert vqa_vocab.article("red") == "a"


@pytest.mark.parametrize(
  "kw,match",
  [
    ({"words": ("<pad>", "x")}, "must start with"),
    (
      {"words": vqa_vocab.SPECIALS + ("x", "y", "x"), "answers": ("y",)},
      r"repeated: \['x'\]",
    ),
    ({"words": vqa_vocab.SPECIALS + ("x",), "answers": ("z",)}, r"\['z'\]"),
    (
      {"words": vqa_vocab.SPECIALS + ("x",), "answers": ("<unk>",)},
      "non-special",
    ),
  ],
)
def test_bad_custom_vocabularies(kw, match):
  with pytest.raises(ValueError, match=match):
    VQAVocab(**kw)


def test_custom_vocabulary():
  vocab = VQAVocab(
    words=vqa_vocab.SPECIALS + ("yes", "no", "?"), answers=("yes", "no")
  )
  assert len(vocab) == 8
  np.testing.assert_array_equal(vocab.answer_ids, [5, 6])
