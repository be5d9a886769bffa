"""Tests for jaxexit.models.vit (ViT with an exit after every block)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxexit import execution
from jaxexit.exits import rules
from jaxexit.exits.outputs import ExitHeadOutput
from jaxexit.models.vit import VIT_CONFIGS, ViT, ViTConfig
from tests.tiers import slow

CFG = VIT_CONFIGS["tiny"]
B = 4


class LinearHeads(nnx.Module):
  """One Linear per intermediate block, plus a constant score."""

  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    self.kernel = nnx.Param(
      jax.random.normal(
        rngs.params(), (cfg.depth - 1, cfg.width, cfg.num_classes)
      )
    )

  def __call__(self, layer, features):
    logits = features @ self.kernel[...][layer]
    return ExitHeadOutput(
      logits=logits, score=jnp.zeros(features.shape[:1], jnp.float32)
    )


def _model(cfg=CFG, seed=0):
  return ViT(cfg, rngs=nnx.Rngs(seed))


def _images(cfg=CFG, seed=1):
  return jax.random.normal(
    jax.random.key(seed), (B, cfg.image_size, cfg.image_size, 3)
  )


@slow
def test_shapes():
  model, x = _model(), _images()
  carry = model.embed(x)
  assert carry["h"].shape == (B, CFG.num_patches + 1, CFG.width)
  assert model.cls_features(carry).shape == (B, CFG.width)
  assert model.cls_per_block(x).shape == (B, CFG.depth, CFG.width)
  logits = model(x)
  assert logits.shape == (B, CFG.num_classes) and logits.dtype == jnp.float32


@slow
def test_forward_is_head_on_last_block_features_and_jit_matches():
  model, x = _model(), _images()
  feats = model.cls_per_block(x)
  np.testing.assert_allclose(
    model.head(feats[:, -1]), model(x), rtol=1e-5, atol=1e-5
  )
  jitted = nnx.jit(lambda m, x: m(x))(model, x)
  np.testing.assert_allclose(jitted, model(x), rtol=1e-5, atol=1e-5)


def test_patch_embedding_is_a_strided_convolution():
  model, x = _model(), _images()
  p, d = CFG.patch_size, CFG.width
  kernel = model.patch_embed.kernel[...].reshape(p, p, 3, d)  # HWIO
  conv = jax.lax.conv_general_dilated(
    x, kernel, (p, p), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  conv = conv.reshape(B, -1, d) + model.patch_embed.bias[...][None, None]
  got = model.embed(x)["h"][:, 1:] - model.pos_embed[...][:, 1:]
  np.testing.assert_allclose(got, conv, rtol=1e-4, atol=1e-5)


@slow
def test_dropout_only_with_a_key():
  cfg = dataclasses.replace(CFG, dropout=0.5)
  model, x = _model(cfg), _images(cfg)
  np.testing.assert_array_equal(model(x), model(x))
  a = model(x, dropout_key=jax.random.key(0))
  b = model(x, dropout_key=jax.random.key(1))
  assert not np.allclose(a, b)


@slow
def test_exit_stack_heads_then_backbone_head():
  model, x = _model(), _images()
  heads = LinearHeads(CFG, rngs=nnx.Rngs(3))
  stack, params = model.exit_stack(heads)
  assert stack.num_layers == CFG.depth
  res = execution.simulate(stack, rules.never(), params, model.embed(x))
  feats = model.cls_per_block(x)
  want = jnp.einsum("BLD,LDC->BLC", feats[:, :-1], heads.kernel[...])
  np.testing.assert_allclose(
    res.per_layer.logits[:, :-1], want, rtol=1e-4, atol=1e-4
  )
  np.testing.assert_allclose(
    res.per_layer.logits[:, -1], model(x), rtol=1e-4, atol=1e-4
  )
  # The last block's score is ones (every mode exits there).
  np.testing.assert_array_equal(res.per_layer.score[:, -1], 1.0)
  np.testing.assert_array_equal(res.per_layer.score[:, :-1], 0.0)
  full = execution.make_full_model(stack)(params, model.embed(x))
  np.testing.assert_allclose(full.logits, model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(VIT_CONFIGS))
def test_configs_are_valid(name):
  cfg = VIT_CONFIGS[name]
  assert cfg.image_size % cfg.patch_size == 0
  assert cfg.width % cfg.num_heads == 0


def test_t2t_vit_7_like_sizes():
  cfg = VIT_CONFIGS["t2t_vit_7_like"]
  assert (cfg.width, cfg.depth, cfg.num_heads, cfg.mlp_dim) == (256, 7, 4, 512)
  assert cfg.num_patches == 196


def test_bad_config():
  with pytest.raises(ValueError, match="image_size=30"):
    ViTConfig(image_size=30, patch_size=4)
  with pytest.raises(ValueError, match="width=30"):
    ViTConfig(width=30, num_heads=4)
  with pytest.raises(ValueError, match="depth"):
    ViTConfig(depth=1)
  with pytest.raises(ValueError, match="dropout"):
    ViTConfig(dropout=1.0)


def test_wrong_image_size():
  model = _model()
  with pytest.raises(ValueError, match=r"images.shape=\(4, 16, 16, 3\)"):
    model(jnp.zeros((B, 16, 16, 3)))
  with pytest.raises(ValueError, match="image_size=32"):
    model.embed(jnp.zeros((B, 40, 40, 3)))
