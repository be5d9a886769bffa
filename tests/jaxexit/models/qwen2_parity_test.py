"""Qwen2 as a `LlamaLM` config (q/k/v biases): parity with transformers'
`Qwen2ForCausalLM` through a saved safetensors folder, the biases in the
state dict, the DeepSeek-R1-Distill-Qwen-1.5B preset, `from_hf` refusals."""

import dataclasses
import os

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
from tests.jaxexit.models.llama_test import (
  assert_cached_decode_matches,
  hf_forward,
  token_ids,
)
from tests.tiers import slow

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TOL = dict(rtol=1e-5, atol=1e-5)
R1_DISTILL = "deepseek-r1-distill-qwen-1.5b"

# deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B config.json, as published:
# sliding_window is set but unused (use_sliding_window false).
R1_DISTILL_JSON = {
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151643,
  "hidden_act": "silu",
  "hidden_size": 1536,
  "initializer_range": 0.02,
  "intermediate_size": 8960,
  "max_position_embeddings": 131072,
  "max_window_layers": 21,
  "model_type": "qwen2",
  "num_attention_heads": 12,
  "num_hidden_layers": 28,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06,
  "rope_theta": 10000,
  "sliding_window": 4096,
  "tie_word_embeddings": False,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.44.0",
  "use_cache": True,
  "use_mrope": False,
  "use_sliding_window": False,
  "vocab_size": 151936,
}

# A tiny config.json dict for the `from_hf` checks.
QWEN2_TINY = dict(
  model_type="qwen2",
  vocab_size=100,
  hidden_size=32,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  intermediate_size=64,
)

# name -> extra `Qwen2Config` kwargs; "window" puts a window of 4 < T on
# every layer (max_window_layers=0), which `LlamaConfig.sliding_window`
# expresses exactly.
CASES = {
  "full": {},
  "window": dict(
    use_sliding_window=True, sliding_window=4, max_window_layers=0
  ),
}


def qwen2_model(case: str = "full"):
  """A seeded random HF Qwen2 LM, every tensor perturbed and the q/k/v
  biases (zero at HF init) made large enough to matter."""
  torch = pytest.importorskip("torch")
  tf = pytest.importorskip("transformers")
  torch.manual_seed(0)
  cfg = tf.Qwen2Config(
    vocab_size=128,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=96,
    max_position_embeddings=64,
    rms_norm_eps=1e-6,
    rope_theta=5000.0,
    tie_word_embeddings=False,
    attn_implementation="eager",
    **CASES[case],
  )
  model = tf.Qwen2ForCausalLM(cfg)
  with torch.no_grad():
    for name, p in model.named_parameters():
      scale = 0.5 if name.endswith("_proj.bias") else 0.1
      p.add_(scale * torch.randn_like(p))
  return model.eval()


def llama_from_pretrained_state(hf) -> LlamaLM:
  """`LlamaLM` from an in-memory HF model (config dict + state dict)."""
  model = LlamaLM(LlamaConfig.from_hf(hf.config.to_dict()), rngs=nnx.Rngs(0))
  load_llama_state_dict(
    model, {k: v.numpy() for k, v in hf.state_dict().items()}
  )
  return model


def _logits_fn(model: LlamaLM):
  """Jitted logits of any `LlamaLM` with `model`'s graph (one compile)."""
  graphdef, _ = nnx.split(model)
  run = jax.jit(lambda state, ids: nnx.merge(graphdef, state)(ids).logits)
  return lambda m, ids: np.asarray(run(nnx.state(m), jnp.asarray(ids)))


def test_from_pretrained_matches_transformers(tmp_path):
  hf = qwen2_model()
  hf.save_pretrained(tmp_path)
  assert (tmp_path / "model.safetensors").exists()
  ours = llama_from_pretrained(tmp_path)
  assert ours.cfg.qkv_bias and ours.cfg.sliding_window is None
  assert ours.cfg.rope_theta == 5000.0 and not ours.cfg.tie_embeddings
  ids = token_ids(2, 12)
  ref, hidden = hf_forward(hf, ids)
  out = jax.jit(ours.__call__)(jnp.asarray(ids))
  assert len(out.hidden_states) == len(hidden) == 3
  np.testing.assert_allclose(out.logits, ref, **TOL)
  for i, (a, b) in enumerate(zip(out.hidden_states, hidden)):
    np.testing.assert_allclose(a, b, err_msg=f"hidden state {i}", **TOL)

  # The biases were loaded, are nonzero, and each of q, k, v changes the
  # logits: a model that ignored any of them would fail the check above.
  state = export_llama_state_dict(ours)
  logits = _logits_fn(ours)
  np.testing.assert_allclose(logits(ours, ids), ref, **TOL)
  for p in "qkv":
    name = f"model.layers.1.self_attn.{p}_proj.bias"
    torch_bias = hf.state_dict()[name].numpy()
    np.testing.assert_array_equal(state[name], torch_bias)
    assert np.abs(torch_bias).min() > 0, name
    ablated = LlamaLM(ours.cfg, rngs=nnx.Rngs(0))
    load_llama_state_dict(ablated, {**state, name: np.zeros_like(torch_bias)})
    diff = np.abs(logits(ablated, ids) - ref).max()
    assert diff > 1e-3, f"zeroing {name} changes the logits by {diff}"


@slow
def test_window_on_every_layer_matches_transformers():
  hf = qwen2_model("window")
  assert set(hf.config.layer_types) == {"sliding_attention"}
  ours = llama_from_pretrained_state(hf)
  assert ours.cfg.sliding_window == 4
  ids = token_ids(2, 12)
  ref, hidden = hf_forward(hf, ids)
  out = jax.jit(ours.__call__)(jnp.asarray(ids))
  np.testing.assert_allclose(out.logits, ref, **TOL)
  for i, (a, b) in enumerate(zip(out.hidden_states, hidden)):
    np.testing.assert_allclose(a, b, err_msg=f"hidden state {i}", **TOL)


@slow
@pytest.mark.parametrize("case", list(CASES))
def test_cached_decode_matches_full_forward(case):
  hf = qwen2_model(case)
  assert_cached_decode_matches(llama_from_pretrained_state(hf), hf)


TINY_QWEN2 = dataclasses.replace(LLAMA_CONFIGS["tiny"], qkv_bias=True)


def test_state_dict_has_qkv_biases_and_round_trips():
  src = LlamaLM(TINY_QWEN2, rngs=nnx.Rngs(0))
  state = export_llama_state_dict(src)
  assert len(state) == 3 + 12 * TINY_QWEN2.num_layers
  assert state["model.layers.1.self_attn.k_proj.bias"].shape == (16,)
  assert "model.layers.1.self_attn.o_proj.bias" not in state
  assert "model.layers.1.mlp.up_proj.bias" not in state
  state = {k: v + 1 if k.endswith(".bias") else v for k, v in state.items()}
  dst = LlamaLM(TINY_QWEN2, rngs=nnx.Rngs(1))
  load_llama_state_dict(dst, state)
  np.testing.assert_array_equal(
    dst.layers[1].self_attn.v_proj.bias[...],
    state["model.layers.1.self_attn.v_proj.bias"],
  )


def test_missing_bias_is_named():
  state = export_llama_state_dict(LlamaLM(TINY_QWEN2, rngs=nnx.Rngs(0)))
  del state["model.layers.0.self_attn.q_proj.bias"]
  with pytest.raises(
    ValueError, match="missing tensor 'model.layers.0.self_attn.q_proj.bias'"
  ):
    load_llama_state_dict(LlamaLM(TINY_QWEN2, rngs=nnx.Rngs(1)), state)


def test_biases_into_bias_free_model_are_unused():
  state = export_llama_state_dict(LlamaLM(TINY_QWEN2, rngs=nnx.Rngs(0)))
  with pytest.raises(
    ValueError,
    match=r"unused tensors \['model.layers.0.self_attn.k_proj.bias'.*"
    r"q/k/v projection biases need LlamaConfig.qkv_bias=True",
  ):
    load_llama_state_dict(
      LlamaLM(LLAMA_CONFIGS["tiny"], rngs=nnx.Rngs(1)), state
    )


def _num_params(cfg: LlamaConfig) -> int:
  model = nnx.eval_shape(lambda: LlamaLM(cfg, rngs=nnx.Rngs(0)))
  return sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model)))


def test_r1_distill_preset_matches_published_config():
  assert LlamaConfig.from_hf(R1_DISTILL_JSON) == LLAMA_CONFIGS[R1_DISTILL]
  # 1.78B, as the model card says; the biases are 28 * (1536 + 2 * 256).
  assert _num_params(LLAMA_CONFIGS[R1_DISTILL]) == 1_777_088_000


@pytest.mark.parametrize(
  "extra, window",
  [
    ({}, None),
    (dict(sliding_window=4096, use_sliding_window=False), None),
    # HF's default max_window_layers=28 ≥ 2 layers: no layer slides.
    (dict(sliding_window=8, use_sliding_window=True), None),
    (
      dict(sliding_window=8, use_sliding_window=True, max_window_layers=2),
      None,
    ),
    (dict(sliding_window=8, use_sliding_window=True, max_window_layers=0), 8),
    (
      dict(
        sliding_window=8,
        use_sliding_window=True,
        layer_types=["sliding_attention"] * 2,
      ),
      8,
    ),
    # Bias keys are not read by HF Qwen2 (its q/k/v always have biases).
    (dict(attention_bias=False, mlp_bias=False), None),
  ],
)
def test_from_hf_qwen2(extra, window):
  cfg = LlamaConfig.from_hf({**QWEN2_TINY, **extra})
  assert cfg.qkv_bias and cfg.sliding_window == window


def test_from_hf_qkv_bias_only_for_qwen2():
  for model_type in ("llama", "mistral"):
    hf = {**QWEN2_TINY, "model_type": model_type}
    assert not LlamaConfig.from_hf(hf).qkv_bias


@pytest.mark.parametrize(
  "extra, match",
  [
    (
      dict(sliding_window=8, use_sliding_window=True, max_window_layers=1),
      r"use_sliding_window=True with sliding_window=8, max_window_layers=1, "
      r"num_hidden_layers=2 puts the window on layers \[1\] only",
    ),
    (
      dict(
        sliding_window=8,
        use_sliding_window=True,
        layer_types=["sliding_attention", "full_attention"],
      ),
      r"on layers \[0\] only",
    ),
    (
      dict(
        sliding_window=8,
        use_sliding_window=True,
        layer_types=["chunked_attention"] * 2,
      ),
      r"layer_types \['chunked_attention'\] unsupported",
    ),
    (dict(use_mrope=True), "use_mrope=True"),
    (dict(rope_scaling=dict(rope_type="yarn", factor=4.0)), "'yarn'"),
  ],
)
def test_from_hf_qwen2_refusals(extra, match):
  with pytest.raises(ValueError, match=match):
    LlamaConfig.from_hf({**QWEN2_TINY, **extra})


def test_from_hf_refuses_transformers_mixed_window_config():
  tf = pytest.importorskip("transformers")
  hf = tf.Qwen2Config(
    **{k: v for k, v in QWEN2_TINY.items() if k != "model_type"},
    use_sliding_window=True,
    sliding_window=8,
    max_window_layers=1,
  )
  assert hf.layer_types == ["full_attention", "sliding_attention"]
  with pytest.raises(ValueError, match=r"on layers \[1\] only"):
    LlamaConfig.from_hf(hf.to_dict())
