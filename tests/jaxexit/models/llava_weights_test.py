"""Hugging Face LLaVA / CLIP state dicts ↔ LlavaLM, the 7B layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxexit.models.clip_vision import ClipVision
from jaxexit.models.llava import LLAVA_CONFIGS, LlavaLM
from jaxexit.models.llava_weights import (
  export_llava_state_dict,
  llava_from_pretrained,
  llava_tensor_shapes,
  load_clip_vision_state_dict,
  load_llava_state_dict,
)
from tests.jaxexit.models.clip_vision_test import images
from tests.jaxexit.models.llava_test import (
  LLAVA_15_7B_JSON,
  TINY,
  forward,
  hf_forward,
  hf_llava,
  prompt,
)
from tests.tiers import slow

TOL = dict(rtol=1e-5, atol=1e-5)


def _logits(model: LlavaLM) -> np.ndarray:
  return np.asarray(forward(model, prompt(2, 24), images(2)).logits)


def _state_and_model():
  state = export_llava_state_dict(LlavaLM(TINY, rngs=nnx.Rngs(0)))
  return state, LlavaLM(TINY, rngs=nnx.Rngs(1))


@slow
def test_export_load_round_trip():
  src = LlavaLM(TINY, rngs=nnx.Rngs(0))
  dst = LlavaLM(TINY, rngs=nnx.Rngs(1))
  state = export_llava_state_dict(src)
  # 5 embedding/LN tensors + 16 per CLIP layer + 2 LN, 4 projector, LM.
  assert len(state) == 5 + 16 * 3 + 2 + 4 + 2 + 9 * 2 + 1
  assert state["vision_tower.embeddings.patch_embedding.weight"].shape == (
    48,
    3,
    8,
    8,
  )
  assert state["multi_modal_projector.linear_1.weight"].shape == (32, 48)
  assert state["language_model.lm_head.weight"].shape == (128, 32)
  assert {k: v.shape for k, v in state.items()} == llava_tensor_shapes(src)
  load_llava_state_dict(dst, state)
  for (p, a), (q, b) in zip(
    nnx.to_flat_state(nnx.state(src)), nnx.to_flat_state(nnx.state(dst))
  ):
    assert p == q
    np.testing.assert_array_equal(a[...], b[...], err_msg=str(p))


def _legacy(state: dict) -> dict:
  """llava-hf's published spelling (transformers 4.3x)."""
  return {
    k.replace("vision_tower.", "vision_tower.vision_model."): v
    for k, v in state.items()
  }


@slow
def test_all_spellings_load_and_transformers_reads_our_export(tmp_path):
  safetensors = pytest.importorskip("safetensors.numpy")
  tf = pytest.importorskip("transformers")
  hf = hf_llava()
  in_memory = {k: v.numpy() for k, v in hf.state_dict().items()}
  assert "model.language_model.norm.weight" in in_memory
  ours = LlavaLM(TINY, rngs=nnx.Rngs(0))
  load_llava_state_dict(ours, in_memory)
  exported = export_llava_state_dict(ours)
  for state in (exported, _legacy(exported)):
    other = LlavaLM(TINY, rngs=nnx.Rngs(1))
    load_llava_state_dict(other, state)
    np.testing.assert_array_equal(_logits(other), _logits(ours))
  # transformers loads the export with no missing or unexpected tensor.
  hf.config.save_pretrained(tmp_path)
  safetensors.save_file(
    exported, str(tmp_path / "model.safetensors"), metadata={"format": "pt"}
  )
  back, info = tf.LlavaForConditionalGeneration.from_pretrained(
    tmp_path, output_loading_info=True
  )
  assert not any(info.values()), info
  ids, pixels = prompt(2, 24), images(2)
  ref, _ = hf_forward(back.eval(), ids, pixels)
  np.testing.assert_allclose(_logits(ours), ref, **TOL)


def test_from_pretrained_matches_transformers(tmp_path):
  hf = hf_llava()
  hf.save_pretrained(tmp_path)
  ours = llava_from_pretrained(tmp_path)
  assert ours.cfg == TINY
  ids, pixels = prompt(2, 24), images(2)
  ref, _ = hf_forward(hf, ids, pixels)
  np.testing.assert_allclose(_logits(ours), ref, **TOL)


@slow
def test_missing_tensor_is_named_and_model_unchanged():
  state, dst = _state_and_model()
  before = _logits(dst)
  del state["vision_tower.encoder.layers.2.mlp.fc1.bias"]
  del state["language_model.model.layers.1.mlp.up_proj.weight"]
  with pytest.raises(
    ValueError,
    match="missing tensor 'vision_tower.encoder"
    ".layers.2.mlp.fc1.bias'.*missing tensor 'language_"
    "model.model.layers.1.mlp.up_proj.weight'",
  ):
    load_llava_state_dict(dst, state)
  np.testing.assert_array_equal(_logits(dst), before)


def test_misshaped_tensor_is_named():
  state, dst = _state_and_model()
  name = "multi_modal_projector.linear_1.weight"
  state[name] = state[name].T
  with pytest.raises(
    ValueError,
    match=rf"tensor '{name}' has shape "
    r"\(48, 32\); expected \(32, 48\)",
  ):
    load_llava_state_dict(dst, state)


def test_unused_and_duplicate_tensors():
  state, dst = _state_and_model()
  state["vision_tower.embeddings.position_ids"] = np.arange(17)[None]
  load_llava_state_dict(dst, state)
  state["vision_tower.encoder.layers.3.mlp.fc1.bias"] = np.ones(96)
  with pytest.raises(
    ValueError,
    match=r"unused tensors \['vision_tower."
    r"encoder.layers.3.mlp.fc1.bias'\]",
  ):
    load_llava_state_dict(dst, state)
  state, _ = _state_and_model()
  state["lm_head.weight"] = state["language_model.lm_head.weight"]
  with pytest.raises(
    ValueError,
    match="'language_model.lm_head.weight' and 'lm_head.weight' both name",
  ):
    load_llava_state_dict(dst, state)


@slow
def test_clip_loader_accepts_vision_model_prefix_and_names_errors():
  src = LlavaLM(TINY, rngs=nnx.Rngs(0))
  tower = {
    "vision_model." + k[len("vision_tower.") :]: v
    for k, v in export_llava_state_dict(src).items()
    if k.startswith("vision_tower.")
  }
  dst = ClipVision(TINY.vision, rngs=nnx.Rngs(1))
  load_clip_vision_state_dict(dst, tower)
  x = jnp.asarray(images(1))
  np.testing.assert_array_equal(dst.features(x), src.vision.features(x))
  del tower["vision_model.post_layernorm.bias"]
  with pytest.raises(
    ValueError, match="ClipVision: missing tensor 'post_layernorm.bias'"
  ):
    load_clip_vision_state_dict(dst, tower)


def test_no_config_json(tmp_path):
  with pytest.raises(ValueError, match="no config.json"):
    llava_from_pretrained(tmp_path)


@slow
def test_llava_15_7b_layout_matches_transformers_meta_model():
  """Tensor names and shapes of the 7B preset against transformers' model
  on the meta device (no weights anywhere), and an abstract forward."""
  torch = pytest.importorskip("torch")
  tf = pytest.importorskip("transformers")
  cfg = LLAVA_CONFIGS["llava-1.5-7b"]
  model = nnx.eval_shape(lambda: LlavaLM(cfg, rngs=nnx.Rngs(0)))
  ours = llava_tensor_shapes(model)
  with torch.device("meta"):
    hf = tf.LlavaForConditionalGeneration(tf.LlavaConfig(**LLAVA_15_7B_JSON))
  renames = (
    ("model.language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
  )
  theirs = {}
  for name, value in hf.state_dict().items():
    for old, new in renames:
      if name.startswith(old):
        name = new + name[len(old) :]
        break
    theirs[name] = tuple(value.shape)
  assert ours == theirs
  assert sum(np.prod(s) for s in ours.values()) == 7_063_427_072
  # 576 placeholders + 24 text tokens.
  graphdef, state = nnx.split(model)
  out = jax.eval_shape(
    lambda st, t, x: nnx.merge(graphdef, st)(t, x).logits,
    state,
    jax.ShapeDtypeStruct((1, 600), jnp.int32),
    jax.ShapeDtypeStruct((1, 336, 336, 3), jnp.float32),
  )
  assert out.shape == (1, 600, 32064) and out.dtype == jnp.float32
