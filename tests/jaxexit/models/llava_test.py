"""LlavaLM: parity with transformers, the placeholder merge, config checks."""

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxexit.models.llama import LlamaLM
from jaxexit.models.llava import (
  LLAVA_CONFIGS,
  LlavaConfig,
  LlavaLM,
  merge_embeddings,
)
from jaxexit.models.llava_weights import load_llava_state_dict
from tests.jaxexit.models.clip_vision_test import images, perturb
from tests.tiers import slow

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY = LLAVA_CONFIGS["tiny"]
N = TINY.num_image_tokens  # 16
IMAGE_ID = TINY.image_token_id  # 127
TOL = dict(rtol=1e-5, atol=1e-5)

# llava-hf/llava-1.5-7b-hf's config.json as published (transformers 4.39).
LLAVA_15_7B_JSON = {
  "architectures": ["LlavaForConditionalGeneration"],
  "ignore_index": -100,
  "image_token_index": 32000,
  "model_type": "llava",
  "pad_token_id": 32001,
  "projector_hidden_act": "gelu",
  "text_config": {
    "_name_or_path": "lmsys/vicuna-7b-v1.5",
    "architectures": ["LlamaForCausalLM"],
    "max_position_embeddings": 4096,
    "model_type": "llama",
    "rms_norm_eps": 1e-05,
    "torch_dtype": "float16",
    "vocab_size": 32064,
  },
  "tie_word_embeddings": False,
  "torch_dtype": "float16",
  "transformers_version": "4.39.3",
  "use_cache": True,
  "vision_config": {
    "hidden_size": 1024,
    "image_size": 336,
    "intermediate_size": 4096,
    "model_type": "clip_vision_model",
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "patch_size": 14,
    "projection_dim": 768,
    "vocab_size": 32000,
  },
  "vision_feature_layer": -2,
  "vision_feature_select_strategy": "default",
}


def hf_llava(**kw):
  """A seeded random HF LLaVA with the sizes of LLAVA_CONFIGS["tiny"] and
  every tensor perturbed; `kw` overrides top-level LlavaConfig fields."""
  torch = pytest.importorskip("torch")
  tf = pytest.importorskip("transformers")
  torch.manual_seed(0)
  vision = tf.CLIPVisionConfig(
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
  )
  text = tf.LlamaConfig(
    vocab_size=128,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
  )
  cfg = tf.LlavaConfig(
    vision_config=vision, text_config=text, image_token_id=IMAGE_ID, **kw
  )
  cfg._attn_implementation = "eager"
  return perturb(tf.LlavaForConditionalGeneration(cfg))


def ours_from(hf) -> LlavaLM:
  model = LlavaLM(LlavaConfig.from_hf(hf.config.to_dict()), rngs=nnx.Rngs(0))
  load_llava_state_dict(
    model, {k: v.numpy() for k, v in hf.state_dict().items()}
  )
  return model


def prompt(b: int, t: int, n: int = N, seed: int = 0) -> np.ndarray:
  """[B, T] text ids (never the placeholder) with n placeholders at random
  positions of each row."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, IMAGE_ID, (b, t)).astype(np.int32)
  for row in ids:
    row[rng.choice(t, n, replace=False)] = IMAGE_ID
  return ids


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, ids, pixels, valid):
  return nnx.merge(graphdef, state)(ids, pixels, valid)


def forward(model: LlavaLM, ids, pixels, valid=None):
  """Jitted `model(ids, pixels, valid)`; models of one config share one
  compilation per input shape."""
  if valid is None:
    valid = np.ones(np.shape(ids), bool)
  return _forward(
    *nnx.split(model), jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(valid)
  )


def hf_forward(hf, ids, pixels, mask=None):
  import torch

  t = torch.as_tensor
  with torch.no_grad():
    out = hf(
      input_ids=t(ids).long(),
      pixel_values=t(pixels.transpose(0, 3, 1, 2)),
      attention_mask=None if mask is None else t(mask),
      output_hidden_states=True,
    )
  return out.logits.numpy(), [h.numpy() for h in out.hidden_states]


@pytest.mark.parametrize(
  "kw",
  [
    {},
    pytest.param(
      dict(vision_feature_layer=-1, vision_feature_select_strategy="full"),
      marks=slow,
    ),
  ],
  ids=["llava15", "last_layer_full"],
)
def test_matches_transformers(kw):
  hf = hf_llava(**kw)
  ours = ours_from(hf)
  if not kw:
    assert ours.cfg == TINY
  n = ours.cfg.num_image_tokens
  ids, pixels = prompt(2, 24, n), images(2)
  logits, hidden = hf_forward(hf, ids, pixels)
  out = forward(ours, ids, pixels)
  assert out.logits.shape == (2, 24, 128) and out.logits.dtype == jnp.float32
  np.testing.assert_allclose(out.logits, logits, **TOL)
  for i, (a, b) in enumerate(zip(out.hidden_states, hidden)):
    np.testing.assert_allclose(a, b, err_msg=f"hidden state {i}", **TOL)


def test_right_padding_matches_transformers():
  hf = hf_llava()
  ours = ours_from(hf)
  ids, pixels = prompt(2, 24), images(2, seed=1)
  valid = np.ones((2, 24), bool)
  valid[1, 20:] = False
  ids[1, 20:] = 0  # padding after the row's placeholders
  ids[1, :20] = prompt(1, 20)[0]
  logits, _ = hf_forward(hf, ids, pixels, valid.astype(np.int64))
  out = forward(ours, ids, pixels, valid)
  np.testing.assert_allclose(
    np.asarray(out.logits)[valid], logits[valid], **TOL
  )


@pytest.fixture(scope="module")
def tiny():
  return LlavaLM(TINY, rngs=nnx.Rngs(0))


def test_merge_places_image_embeddings_at_placeholders(tiny):
  ids = prompt(3, 30, seed=2)
  emb = jax.random.normal(jax.random.key(0), (3, N, 32))
  for merged in (
    tiny.merge(jnp.asarray(ids), emb),
    jax.jit(tiny.merge)(jnp.asarray(ids), emb),
  ):
    text = np.asarray(tiny.lm.embed(jnp.asarray(ids)))
    merged = np.asarray(merged)
    for b in range(3):
      where = np.flatnonzero(ids[b] == IMAGE_ID)
      np.testing.assert_array_equal(merged[b, where], np.asarray(emb[b]))
      rest = np.setdiff1d(np.arange(30), where)
      np.testing.assert_array_equal(merged[b, rest], text[b, rest])


def test_merge_placeholder_count_error_and_jit_fallback(tiny):
  ids = prompt(3, 30, seed=3)
  ids[1, np.flatnonzero(ids[1] == IMAGE_ID)[-1]] = 5  # 15 placeholders
  emb = jax.random.normal(jax.random.key(1), (3, N, 32))
  with pytest.raises(
    ValueError,
    match=r"N=16 placeholders.*rows \[1\] "
    r"hold \[15\]",
  ):
    tiny.merge(jnp.asarray(ids), emb)
  # Under jit the count is unchecked: row 1 gets the first 15 embeddings.
  merged = np.asarray(jax.jit(tiny.merge)(jnp.asarray(ids), emb))
  where = np.flatnonzero(ids[1] == IMAGE_ID)
  np.testing.assert_array_equal(merged[1, where], np.asarray(emb[1, :15]))


def test_merge_embeddings_surplus_placeholders_repeat_the_last():
  text = jnp.zeros((1, 5, 2))
  image = jnp.arange(4.0).reshape(1, 2, 2)
  is_image = jnp.array([[True, False, True, True, False]])
  out = np.asarray(merge_embeddings(text, image, is_image))
  np.testing.assert_array_equal(out[0, :, 0], [0, 0, 2, 2, 0])


@slow
def test_call_jit_equals_eager_and_wrong_image_size(tiny):
  ids, pixels = jnp.asarray(prompt(2, 24)), jnp.asarray(images(2))
  eager = tiny(ids, pixels).logits
  np.testing.assert_allclose(
    forward(tiny, ids, pixels).logits, eager, rtol=1e-6, atol=1e-6
  )
  with pytest.raises(ValueError, match=r"images.shape=\(2, 16, 16, 3\)"):
    tiny(ids, jnp.zeros((2, 16, 16, 3)))


@slow
def test_forward_embeddings_equals_call():
  lm = LlamaLM(TINY.text, rngs=nnx.Rngs(2))
  ids = jnp.asarray(prompt(2, 12, n=0))
  a = jax.jit(lm.__call__)(ids)
  b = jax.jit(lambda t: lm.forward_embeddings(lm.embed(t)))(ids)
  np.testing.assert_array_equal(a.logits, b.logits)
  with pytest.raises(ValueError, match="max_position=64"):
    lm.forward_embeddings(jnp.zeros((1, 65, 32)))


@pytest.mark.parametrize(
  "bad, match",
  [
    (
      dict(image_token_id=128),
      "image_token_id=128 must be < text.vocab_size=128",
    ),
    (dict(vision_feature_select_strategy="cls"), "select_strategy"),
    (dict(vision_feature_layer=4), "layer=4"),
    (dict(projector_act="quick_gelu"), "projector_act"),
  ],
)
def test_config_errors(bad, match):
  with pytest.raises(ValueError, match=match):
    dataclasses.replace(TINY, **bad)


def test_llava_15_7b_config_matches_published():
  cfg = LlavaConfig.from_hf(LLAVA_15_7B_JSON)
  assert cfg == LLAVA_CONFIGS["llava-1.5-7b"]
  assert cfg.num_image_tokens == 576 and cfg.text.head_dim == 128
  # Our defaults for omitted keys are transformers' own.
  tf = pytest.importorskip("transformers")
  full = tf.LlavaConfig(**LLAVA_15_7B_JSON).to_dict()
  assert LlavaConfig.from_hf(full) == cfg
  bf16 = LlavaConfig.from_hf(LLAVA_15_7B_JSON, dtype=jnp.bfloat16)
  assert bf16.vision.dtype == bf16.text.dtype == jnp.bfloat16


@pytest.mark.parametrize(
  "change, match",
  [
    (dict(model_type="llama"), "model_type='llama'"),
    (dict(vision_feature_layer=[-2, -1]), "vision_feature_layer"),
    (dict(multimodal_projector_bias=False), "multimodal_projector_bias"),
    (dict(vision_config=None), "vision_config"),
  ],
)
def test_from_hf_errors(change, match):
  hf = {
    k: v for k, v in {**LLAVA_15_7B_JSON, **change}.items() if v is not None
  }
  with pytest.raises(ValueError, match=match):
    LlavaConfig.from_hf(hf)
