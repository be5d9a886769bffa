"""FeatureLlavaLM: shapes, the position table, the pruned forward, errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxexit.models.feature_llava import FeatureLlavaConfig, FeatureLlavaLM
from jaxexit.models.llama import LlamaConfig
from jaxexit.pruning import make_schedule, pruned_forward
from jaxexit.pruning.prompt import make_pruned_inputs

TEXT = LlamaConfig(
  vocab_size=32, d_model=16, num_layers=4, num_heads=4, mlp_hidden=32
)
CFG = FeatureLlavaConfig(text=TEXT, feature_dim=12, grid=3, image_token_id=31)


def _features(b=2, cfg=CFG):
  shape = (b, cfg.grid, cfg.grid, cfg.feature_dim)
  return jax.random.normal(jax.random.key(0), shape, jnp.float16)


def test_image_embeddings_shape_and_row_major_cells():
  model = FeatureLlavaLM(CFG, rngs=nnx.Rngs(0))
  feats = _features()
  emb = model.image_embeddings(feats)
  assert CFG.num_image_tokens == 9
  assert emb.shape == (2, 9, 16) and emb.dtype == jnp.float32
  # Token 3k + j is cell (k, j): projecting that cell alone matches.
  cell = feats[:, 1, 2][:, None].astype(jnp.float32)  # [B, 1, C]
  cell = model.projector(model.norm(cell))
  want = cell[:, 0] + model.position[...][5][None]
  np.testing.assert_allclose(emb[:, 5], want, rtol=1e-5, atol=1e-5)


def test_norm_and_position_table_are_optional_and_trained():
  off = dataclasses.replace(CFG, position_embedding=False, feature_norm=False)
  model = FeatureLlavaLM(off, rngs=nnx.Rngs(0))
  assert model.position is None and model.norm is None
  feats = _features()
  np.testing.assert_allclose(
    model.image_embeddings(feats),
    model.projector(feats.reshape(2, 9, 12).astype(jnp.float32)),
    rtol=1e-6,
  )
  on = FeatureLlavaLM(CFG, rngs=nnx.Rngs(0))
  params = nnx.state(on, nnx.Param)
  assert params["position"][...].shape == (9, 16)
  assert params["norm"]["scale"][...].shape == (12,)


def test_pruned_forward_runs_on_projected_features():
  model = FeatureLlavaLM(CFG, rngs=nnx.Rngs(0))
  ids = jnp.ones((2, 4), jnp.int32)
  inputs = make_pruned_inputs(
    model.lm.embed(ids[:, :1]),
    model.lm.embed(ids[:, 1:]),
    jnp.array([3, 2]),
    model.image_embeddings(_features()),
  )
  schedule = make_schedule("hidrop", "tok64", 4, 9)
  out = pruned_forward(model.lm, inputs, schedule)
  assert out.logits.shape == (2, 4, 32)
  assert bool(jnp.all(jnp.isfinite(out.logits)))


def test_bad_shapes_and_configs_are_named():
  model = FeatureLlavaLM(CFG, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"\[B, 3, 3, 12\].*\(2, 4, 4, 12\)"):
    model.image_embeddings(jnp.zeros((2, 4, 4, 12)))
  with pytest.raises(ValueError, match=r"features.shape=\(2, 3, 3, 8\)"):
    model.image_embeddings(jnp.zeros((2, 3, 3, 8)))
  with pytest.raises(ValueError, match="image_token_id=32"):
    dataclasses.replace(CFG, image_token_id=32)
  with pytest.raises(ValueError, match="grid"):
    dataclasses.replace(CFG, grid=0)
  with pytest.raises(ValueError, match="feature_dim"):
    dataclasses.replace(CFG, feature_dim=-1)
  with pytest.raises(ValueError, match="projector_act"):
    dataclasses.replace(CFG, projector_act="swish9")
