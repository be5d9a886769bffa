"""Tokenisers and chat templates from GGUF metadata (offline).

A llama.cpp GGUF file has no `tokenizer.json`; its tokeniser is metadata:

  tokenizer.ggml.model        the algorithm; "gpt2" is byte-level BPE
  tokenizer.ggml.tokens       [V] token strings, spelled in GPT-2's byte
                              alphabet ("Ġ" is a space), id = index
  tokenizer.ggml.merges       BPE merges "a b", best first
  tokenizer.ggml.token_type   [V] 1 normal, 3 control, 4 user-defined, ...
  tokenizer.ggml.pre          llama.cpp's name for the pre-tokeniser regex
  tokenizer.ggml.{bos,eos,padding}_token_id, tokenizer.ggml.add_bos_token
  tokenizer.chat_template     a Jinja template, as in tokenizer_config.json

`GGUFTokenizer` rebuilds the Hugging Face `tokenizers` pipeline from these.
Control tokens (`<|im_start|>`, ...) become special added tokens, so they
encode to one id wherever they appear in the text; user-defined tokens become
plain added tokens (llama.cpp also matches them whole).

Pre-tokenisers (`tokenizer.ggml.pre`), after llama.cpp's `llama-vocab.cpp`:

* "smollm", "starcoder": every digit is a piece of its own, then GPT-2's
  regex. This is `Sequence[Digits(individual_digits=True),
  ByteLevel(add_prefix_space=False)]`, the pre-tokeniser of SmolLM2's own
  `tokenizer.json` (SmolLM2's vocabulary has no multi-digit tokens).
* "gpt-2": GPT-2's regex alone (`ByteLevel(add_prefix_space=False)`).

Other values raise rather than silently split text differently from the
merges' training.

Axes: T tokens, V vocabulary.
"""

import os
from collections.abc import Sequence

import numpy as np

from jaxexit.typing import Array, Int

try:
  import gguf
  import tokenizers
  from tokenizers import decoders, models, pre_tokenizers
except ImportError as e:  # pragma: no cover - depends on the environment
  raise ImportError(
    "jaxexit.data.gguf_tokenizer needs the `gguf` and `tokenizers` "
    "packages (pip install 'jaxexit[models]')"
  ) from e

TokenIds = Sequence[int] | Int[np.ndarray, "T"] | Int[Array, "T"]

_BYTE_LEVEL = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
_PRE_TOKENIZERS = {
  "smollm": pre_tokenizers.Sequence(
    [pre_tokenizers.Digits(individual_digits=True), _BYTE_LEVEL]
  ),
  "starcoder": pre_tokenizers.Sequence(
    [pre_tokenizers.Digits(individual_digits=True), _BYTE_LEVEL]
  ),
  "gpt-2": _BYTE_LEVEL,
}
_REQUIRED = object()


def open_gguf(source: str | os.PathLike | gguf.GGUFReader) -> gguf.GGUFReader:
  """Opens a GGUF file (memory-mapped; tensors are read lazily).

  Args:
    source: a path, or an open reader (returned as is, so that callers can
      share one parse of the metadata).

  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: the file is not a readable GGUF file (bad magic, truncated),
      naming the path.
  """
  if isinstance(source, gguf.GGUFReader):
    return source
  path = os.fspath(source)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no GGUF file at {path!r}")
  try:
    return gguf.GGUFReader(path, "r")
  except Exception as e:  # gguf raises bare ValueErrors, mmap errors, ...
    raise ValueError(
      f"{path!r} is not a readable GGUF file (truncated or "
      f"corrupt?): {type(e).__name__}: {e}"
    ) from e


def gguf_field(reader: gguf.GGUFReader, key: str, default=_REQUIRED):
  """The value of metadata field `key`: a Python scalar, str or list.

  Raises:
    ValueError: the field is absent and no `default` is given.
  """
  field = reader.fields.get(key)
  if field is None:
    if default is _REQUIRED:
      raise ValueError(
        f"GGUF file {reader.data.filename!r} has no metadata field {key!r}"
      )
    return default
  return field.contents()


def _byte_level_bpe(reader: gguf.GGUFReader) -> tokenizers.Tokenizer:
  """The BPE model, pre-tokeniser, decoder and added tokens of the file."""
  tokens = gguf_field(reader, "tokenizer.ggml.tokens")
  merges = gguf_field(reader, "tokenizer.ggml.merges")
  types = gguf_field(reader, "tokenizer.ggml.token_type", None)
  pre = gguf_field(reader, "tokenizer.ggml.pre", "gpt-2")
  if pre not in _PRE_TOKENIZERS:
    raise ValueError(
      f"unsupported tokenizer.ggml.pre={pre!r}; expected one "
      f"of {sorted(_PRE_TOKENIZERS)}"
    )
  if types is not None and len(types) != len(tokens):
    raise ValueError(
      f"tokenizer.ggml.token_type has {len(types)} entries "
      f"but tokenizer.ggml.tokens has {len(tokens)}"
    )
  vocab = {t: i for i, t in enumerate(tokens)}
  pairs = [tuple(m.split(" ")) for m in merges]
  bad = next((m for m, p in zip(merges, pairs) if len(p) != 2), None)
  if bad is not None:
    raise ValueError(f"tokenizer.ggml.merges entry {bad!r} is not 'a b'")
  tok = tokenizers.Tokenizer(models.BPE(vocab, pairs))
  tok.pre_tokenizer = _PRE_TOKENIZERS[pre]
  tok.decoder = decoders.ByteLevel()
  types = types or [gguf.TokenType.NORMAL] * len(tokens)
  tok.add_special_tokens(
    [
      tokenizers.AddedToken(t, special=True, normalized=False)
      for t, k in zip(tokens, types)
      if k == gguf.TokenType.CONTROL
    ]
  )
  tok.add_tokens(
    [
      tokenizers.AddedToken(t, special=False, normalized=False)
      for t, k in zip(tokens, types)
      if k == gguf.TokenType.USER_DEFINED
    ]
  )
  return tok


class GGUFTokenizer:
  """A GGUF file's tokeniser: text ↔ ids, and its chat template."""

  def __init__(
    self,
    tokenizer: tokenizers.Tokenizer,
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int | None = None,
    add_bos: bool = False,
    chat_template: str | None = None,
  ):
    """Wraps a `tokenizers.Tokenizer` (use `from_gguf` to read a file).

    Args:
      tokenizer: ids from `tokenizer.encode(text).ids`, no post-processor.
      bos_id: begin-of-sequence id (`<|im_start|>` for SmolLM2).
      eos_id: end-of-sequence id; generation stops on it (`<|im_end|>`).
      pad_id: padding id, or None.
      add_bos: whether `encode` prepends `bos_id` by default.
      chat_template: the Jinja chat template, or None.

    Raises:
      ValueError: a special id outside the vocabulary.
    """
    self._tok = tokenizer
    self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    for name, value in (
      ("bos_id", bos_id),
      ("eos_id", eos_id),
      ("pad_id", pad_id),
    ):
      if value is not None and not 0 <= value < self.vocab_size:
        raise ValueError(
          f"{name}={value} is outside the vocabulary [0, {self.vocab_size})"
        )
    self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
    self.add_bos = add_bos
    self.chat_template = chat_template
    self._template = None  # compiled on first use; jinja2 is optional

  @classmethod
  def from_gguf(
    cls, source: str | os.PathLike | gguf.GGUFReader
  ) -> "GGUFTokenizer":
    """Reads the tokeniser of a GGUF file (path or open reader).

    Raises:
      ValueError: a tokeniser other than byte-level BPE
        (`tokenizer.ggml.model != "gpt2"`), an unsupported
        `tokenizer.ggml.pre`, or missing metadata, naming the field.
    """
    reader = open_gguf(source)
    kind = gguf_field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
      raise ValueError(
        f"unsupported tokenizer.ggml.model={kind!r} in "
        f"{reader.data.filename!r}; only 'gpt2' (byte-level "
        "BPE) is implemented"
      )
    return cls(
      _byte_level_bpe(reader),
      bos_id=gguf_field(reader, "tokenizer.ggml.bos_token_id"),
      eos_id=gguf_field(reader, "tokenizer.ggml.eos_token_id"),
      pad_id=gguf_field(reader, "tokenizer.ggml.padding_token_id", None),
      add_bos=bool(gguf_field(reader, "tokenizer.ggml.add_bos_token", False)),
      chat_template=gguf_field(reader, "tokenizer.chat_template", None),
    )

  @property
  def tokenizer(self) -> tokenizers.Tokenizer:
    """The underlying `tokenizers.Tokenizer`."""
    return self._tok

  def token_to_id(self, token: str) -> int | None:
    return self._tok.token_to_id(token)

  def id_to_token(self, token_id: int) -> str | None:
    return self._tok.id_to_token(token_id)

  def encode(self, text: str, *, add_bos: bool | None = None) -> list[int]:
    """Token ids of `text`; special tokens written in the text stay whole.

    Args:
      text: any string.
      add_bos: prepend `bos_id`; None uses the file's `add_bos_token`
        (False for SmolLM2, whose chat template starts with `<|im_start|>`).
    """
    ids = self._tok.encode(text, add_special_tokens=False).ids
    add_bos = self.add_bos if add_bos is None else add_bos
    return [self.bos_id, *ids] if add_bos else ids

  def decode(self, ids: TokenIds, *, skip_special_tokens: bool = False) -> str:
    """The text of `ids` (special tokens included unless skipped).

    Args:
      ids: [T] token ids (a list, or a numpy / jax int array).
      skip_special_tokens: drop control tokens (`<|im_end|>`, ...).

    Raises:
      ValueError: an id outside `[0, vocab_size)`, naming it.
    """
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < self.vocab_size]
    if bad:
      raise ValueError(
        f"token ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})"
      )
    return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

  def apply_chat_template(
    self, messages: Sequence[dict], *, add_generation_prompt: bool = True
  ) -> str:
    """Renders a conversation with the file's Jinja chat template.

    Rendered as `transformers` does (sandboxed Jinja, `trim_blocks`,
    `lstrip_blocks`, `raise_exception`, `bos_token`/`eos_token` variables).

    Args:
      messages: `[{"role": "system" | "user" | "assistant", "content": str}]`.
      add_generation_prompt: end with the assistant's turn header, ready for
        generation.

    Returns:
      The prompt text; encode it with `encode` (no extra BOS needed).

    Raises:
      ValueError: no chat template, or a malformed message (naming its
        index), or the template's own `raise_exception`.
    """
    if self.chat_template is None:
      raise ValueError(
        "this tokenizer has no chat template "
        "(tokenizer.chat_template absent from the GGUF)"
      )
    for i, m in enumerate(messages):
      if (
        not isinstance(m, dict)
        or not isinstance(m.get("role"), str)
        or not isinstance(m.get("content"), str)
      ):
        raise ValueError(
          f"messages[{i}]={m!r} must be a dict with str 'role' and 'content'"
        )
    if self._template is None:
      self._template = _compile(self.chat_template)
    return self._template.render(
      messages=list(messages),
      add_generation_prompt=add_generation_prompt,
      bos_token=self.id_to_token(self.bos_id),
      eos_token=self.id_to_token(self.eos_id),
    )


def _compile(source: str):
  """A Jinja template compiled the way `transformers` compiles chat ones."""
  try:
    from jinja2.sandbox import ImmutableSandboxedEnvironment
  except ImportError as e:
    raise ImportError(
      "apply_chat_template needs the `jinja2` package (pip install jinja2)"
    ) from e

  def raise_exception(message):
    raise ValueError(f"chat template error: {message}")

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
  env.globals["raise_exception"] = raise_exception
  return env.from_string(source)
