"""Hugging Face Llama/Mistral state dicts ↔ LlamaLM, and the presets."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxexit.models.llama import LlamaConfig, LlamaLM
from jaxexit.models.llama_weights import (
  LLAMA_CONFIGS,
  export_llama_state_dict,
  llama_from_pretrained,
  load_llama_state_dict,
)
from tests.jaxexit.models.llama_test import hf_forward, hf_model, token_ids
from tests.tiers import slow

TINY = LLAMA_CONFIGS["tiny"]
TIED = dataclasses.replace(TINY, tie_embeddings=True)

# The config.json files of the presets' checkpoints, as published.
MISTRAL_7B_JSON = {
  "architectures": ["MistralForCausalLM"],
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 32768,
  "model_type": "mistral",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05,
  "rope_theta": 10000.0,
  "sliding_window": 4096,
  "tie_word_embeddings": False,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.34.0.dev0",
  "use_cache": True,
  "vocab_size": 32000,
}
SMOLLM2_135M_JSON = {
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": False,
  "attention_dropout": 0.0,
  "bos_token_id": 0,
  "eos_token_id": 0,
  "hidden_act": "silu",
  "hidden_size": 576,
  "initializer_range": 0.041666666666666664,
  "intermediate_size": 1536,
  "is_llama_config": True,
  "max_position_embeddings": 8192,
  "model_type": "llama",
  "num_attention_heads": 9,
  "num_hidden_layers": 30,
  "num_key_value_heads": 3,
  "pretraining_tp": 1,
  "rms_norm_eps": 1e-05,
  "rope_interleaved": False,
  "rope_scaling": None,
  "rope_theta": 100000,
  "tie_word_embeddings": True,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.40.1",
  "use_cache": True,
  "vocab_size": 49152,
}


def _logits(model: LlamaLM) -> np.ndarray:
  ids = jnp.asarray(token_ids(2, 6) % model.vocab_size)
  return np.asarray(jax.jit(lambda t: model(t).logits)(ids))


@slow
@pytest.mark.parametrize("cfg", [TINY, TIED], ids=["untied", "tied"])
def test_export_load_round_trip(cfg):
  src = LlamaLM(cfg, rngs=nnx.Rngs(0))
  dst = LlamaLM(cfg, rngs=nnx.Rngs(1))
  state = export_llama_state_dict(src)
  assert ("lm_head.weight" in state) != cfg.tie_embeddings
  assert len(state) == 2 + 9 * cfg.num_layers + (not cfg.tie_embeddings)
  assert state["model.layers.1.self_attn.k_proj.weight"].shape == (16, 32)
  load_llama_state_dict(dst, state)
  for (p, a), (q, b) in zip(
    nnx.to_flat_state(nnx.state(src)), nnx.to_flat_state(nnx.state(dst))
  ):
    assert p == q
    np.testing.assert_array_equal(a[...], b[...], err_msg=str(p))
  np.testing.assert_array_equal(_logits(dst), _logits(src))


@pytest.mark.parametrize("case", ["llama_mha_tied", "mistral_window"])
def test_from_pretrained_matches_transformers(case, tmp_path):
  hf = hf_model(case)
  hf.save_pretrained(tmp_path)
  ours = llama_from_pretrained(tmp_path)
  assert ours.cfg == LlamaConfig.from_hf(hf.config.to_dict())
  ids = token_ids(2, 9)
  ref, _ = hf_forward(hf, ids)
  out = jax.jit(lambda t: ours(t).logits)(jnp.asarray(ids))
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def _state_and_model(cfg=TINY):
  state = export_llama_state_dict(LlamaLM(cfg, rngs=nnx.Rngs(0)))
  return state, LlamaLM(cfg, rngs=nnx.Rngs(1))


@slow
def test_missing_tensor_is_named_and_model_unchanged():
  state, dst = _state_and_model()
  before = _logits(dst)
  del state["model.layers.1.mlp.up_proj.weight"]
  with pytest.raises(
    ValueError, match="missing tensor 'model.layers.1.mlp.up_proj.weight'"
  ):
    load_llama_state_dict(dst, state)
  np.testing.assert_array_equal(_logits(dst), before)


def test_misshaped_tensor_is_named():
  state, dst = _state_and_model()
  name = "model.layers.0.self_attn.v_proj.weight"
  state[name] = state[name].T
  with pytest.raises(
    ValueError,
    match=rf"tensor '{name}' has shape "
    r"\(32, 16\); expected \(16, 32\)",
  ):
    load_llama_state_dict(dst, state)


def test_unused_tensors_raise_except_inv_freq():
  state, dst = _state_and_model()
  state["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(4)
  load_llama_state_dict(dst, state)
  state["model.layers.2.mlp.up_proj.weight"] = np.ones((64, 32))
  with pytest.raises(
    ValueError,
    match="unused tensors "
    r"\['model.layers.2.mlp.up_proj.weight'\]",
  ):
    load_llama_state_dict(dst, state)


def test_tied_checkpoint_with_lm_head_copy():
  state, dst = _state_and_model(TIED)
  state["lm_head.weight"] = state["model.embed_tokens.weight"].copy()
  load_llama_state_dict(dst, state)
  state["lm_head.weight"] = state["lm_head.weight"] + 1
  with pytest.raises(ValueError, match="'lm_head.weight' differs"):
    load_llama_state_dict(dst, state)


def test_untied_model_needs_lm_head():
  state, _ = _state_and_model(TIED)
  with pytest.raises(ValueError, match="missing tensor 'lm_head.weight'"):
    load_llama_state_dict(LlamaLM(TINY, rngs=nnx.Rngs(1)), state)


def test_no_config_json(tmp_path):
  with pytest.raises(ValueError, match="no config.json"):
    llama_from_pretrained(tmp_path)


def _num_params(cfg: LlamaConfig) -> int:
  model = nnx.eval_shape(lambda: LlamaLM(cfg, rngs=nnx.Rngs(0)))
  return sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model)))


@pytest.mark.parametrize(
  "name, hf_json, params",
  [
    ("mistral-7b-v0.1", MISTRAL_7B_JSON, 7_241_732_096),
    ("smollm2-135m", SMOLLM2_135M_JSON, 134_515_008),
  ],
)
def test_presets_match_published_configs(name, hf_json, params):
  assert LlamaConfig.from_hf(hf_json) == LLAMA_CONFIGS[name]
  assert _num_params(LLAMA_CONFIGS[name]) == params
