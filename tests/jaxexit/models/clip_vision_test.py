"""ClipVision: parity with transformers' CLIPVisionModel, features, errors."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest
from flax import nnx

from jaxexit.models.clip_vision import ClipVision, ClipVisionConfig
from jaxexit.models.llava_weights import load_clip_vision_state_dict
from tests.tiers import fast_only

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TOL = dict(rtol=1e-5, atol=1e-5)
# Width 48 on 4 heads (K = 12), 16 patches of 8 x 8.
TINY = ClipVisionConfig(
  image_size=32, patch_size=8, width=48, num_layers=3, num_heads=4, mlp_dim=96
)


def perturb(model):
  """HF sets LayerNorm to (1, 0) and biases to 0, which would hide a swapped
  scale/bias or a dropped bias: add noise to every tensor."""
  import torch

  torch.manual_seed(1)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model.eval()


def hf_clip(hidden_act: str = "quick_gelu"):
  torch = pytest.importorskip("torch")
  tf = pytest.importorskip("transformers")
  torch.manual_seed(0)
  cfg = tf.CLIPVisionConfig(
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
    hidden_act=hidden_act,
    attn_implementation="eager",
  )
  return perturb(tf.CLIPVisionModel(cfg))


def images(b: int = 2, size: int = 32, seed: int = 0) -> np.ndarray:
  """[B, S, S, 3] float32 'normalised pixels'."""
  rng = np.random.default_rng(seed)
  return rng.normal(size=(b, size, size, 3)).astype(np.float32)


def hf_forward(hf, x: np.ndarray):
  """(hidden states, pooled) of NHWC images as numpy."""
  import torch

  with torch.no_grad():
    out = hf(
      torch.as_tensor(x.transpose(0, 3, 1, 2)), output_hidden_states=True
    )
  return [h.numpy() for h in out.hidden_states], out.pooler_output.numpy()


@pytest.mark.parametrize("act", fast_only(["quick_gelu", "gelu"], "quick_gelu"))
def test_matches_transformers(act):
  hf = hf_clip(act)
  cfg = ClipVisionConfig.from_hf(hf.config.to_dict())
  assert cfg == dataclasses.replace(TINY, hidden_act=act)
  ours = ClipVision(cfg, rngs=nnx.Rngs(0))
  load_clip_vision_state_dict(
    ours, {k: v.numpy() for k, v in hf.state_dict().items()}
  )
  x = images()
  hidden, pooled = hf_forward(hf, x)
  out = jax.jit(ours.__call__)(jnp.asarray(x))
  assert len(out.hidden_states) == len(hidden) == 4
  for i, (a, b) in enumerate(zip(out.hidden_states, hidden)):
    np.testing.assert_allclose(a, b, err_msg=f"hidden state {i}", **TOL)
  np.testing.assert_allclose(out.pooled, pooled, **TOL)


@pytest.fixture(scope="module")
def tiny():
  return ClipVision(TINY, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("layer", fast_only([-2, -1, 0, 2, -4], -2))
def test_features_are_hidden_states(tiny, layer):
  x = jnp.asarray(images())
  full = tiny(x).hidden_states[layer]
  feats = tiny.features(x, layer)
  assert feats.shape == (2, TINY.num_patches, TINY.width)
  np.testing.assert_allclose(feats, full[:, 1:], **TOL)
  np.testing.assert_allclose(
    tiny.features(x, layer, drop_cls=False), full, **TOL
  )


def test_wrong_image_size_is_named(tiny):
  with pytest.raises(
    ValueError,
    match=r"images must be \[B, 32, 32, 3\].*"
    r"images.shape=\(1, 16, 16, 3\)",
  ):
    tiny(jnp.zeros((1, 16, 16, 3)))
  # Channels first: jaxtyping's hook (tests only) may catch it first.
  with pytest.raises((ValueError, jaxtyping.TypeCheckError)):
    tiny.features(jnp.zeros((1, 3, 32, 32)))


@pytest.mark.parametrize("layer", [4, -5, True])
def test_bad_feature_layer(tiny, layer):
  with pytest.raises(ValueError, match="layer="):
    tiny.features(jnp.asarray(images(1)), layer)
  # jaxtyping's hook (tests only) catches a float first.
  with pytest.raises((ValueError, jaxtyping.TypeCheckError), match="layer"):
    TINY.blocks_before(1.0)


@pytest.mark.parametrize(
  "bad, match",
  [
    (dict(patch_size=6), "image_size=32 must be divisible by patch_size=6"),
    (dict(num_heads=5), "width=48 must be divisible by num_heads=5"),
    (dict(hidden_act="gelu_fast"), "hidden_act"),
    (dict(layer_norm_eps=0.0), "layer_norm_eps"),
    (dict(num_layers=0), "num_layers"),
  ],
)
def test_config_errors(bad, match):
  with pytest.raises(ValueError, match=match):
    dataclasses.replace(TINY, **bad)


def test_from_hf_defaults_and_errors():
  assert ClipVisionConfig.from_hf({}) == ClipVisionConfig()
  with pytest.raises(ValueError, match="model_type='clip_text_model'"):
    ClipVisionConfig.from_hf({"model_type": "clip_text_model"})
  with pytest.raises(ValueError, match="num_channels=1"):
    ClipVisionConfig.from_hf({"num_channels": 1})
