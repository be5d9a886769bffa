"""Tests for jaxexit.models.dyn_perceiver_frozen."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxexit import execution, exits
from jaxexit.models.cnn_stages import StagedCNN, StagedCNNConfig
from jaxexit.models.dyn_perceiver_frozen import (
  FrozenDynPerceiver,
  LatentBranch,
  LatentBranchConfig,
)
from tests.jaxexit.models.cnn_stages_test import forward, rngs
from tests.tiers import heavy

CNN = StagedCNNConfig(
  num_classes=5,
  stem_channels=8,
  channels=(8, 16, 16, 32),
  stem_stride=2,
  depths=(1, 1, 1, 1),
  strides=(1, 2, 2, 2),
)
S = 32  # image size: maps 16, 8, 4, 2 (stem stride 2)
SHAPES = ((16, 16, 8), (8, 8, 16), (4, 4, 16), (2, 2, 32))
CFG = LatentBranchConfig(
  map_shapes=SHAPES,
  head_dim=32,
  num_classes=5,
  num_latents=8,
  widths=(8, 8, 16, 16),
  sa_depths=(1, 1, 1, 1),
  sa_heads=(1, 2, 2, 4),
)


def random_maps(batch: int, key: int = 0) -> dict:
  keys = jax.random.split(jax.random.key(key), 5)
  maps = {
    f"stage{i}": jax.random.normal(k, (batch,) + s)
    for i, (k, s) in enumerate(zip(keys, SHAPES))
  }
  maps["head"] = jax.random.normal(keys[4], (batch, 32))
  return maps


@pytest.fixture(scope="module")
def latent():
  model = LatentBranch(CFG, rngs=rngs(1))
  model.eval()
  return model


@heavy
def test_logits_shape_and_finite(latent):
  out = forward(latent, random_maps(3))
  assert out.shape == (3, 4, 5) and out.dtype == jnp.float32
  assert np.isfinite(np.asarray(out)).all()


@heavy
def test_later_maps_do_not_change_earlier_exits(latent):
  # Exit order by compute: y_e3 reads stage0-1 only, y_att adds stage2,
  # y_cnn reads only the head features.
  a, b = random_maps(2, 0), random_maps(2, 1)
  mixed = dict(a, stage2=b["stage2"], stage3=b["stage3"], head=b["head"])
  ya, ym = forward(latent, a), forward(latent, mixed)
  np.testing.assert_allclose(ym[:, 0], ya[:, 0], rtol=1e-6, atol=1e-6)
  assert not np.allclose(ym[:, 1:], ya[:, 1:])
  mixed = dict(a, stage3=b["stage3"])
  ym = forward(latent, mixed)
  np.testing.assert_allclose(ym[:, :3], ya[:, :3], rtol=1e-6, atol=1e-6)


@heavy
def test_live_stack_matches_cached_maps(latent):
  """The live model and its 4-segment stack give the logits of the latent
  branch on the CNN's own maps (the reference)."""
  cnn = StagedCNN(CNN, rngs=rngs(0))
  cnn.eval()
  images = jax.random.normal(jax.random.key(2), (4, S, S, 3))
  x = cnn.stem(images)
  maps = {}
  for i in range(4):
    x = cnn.stage(i, x)
    maps[f"stage{i}"] = x
  maps["head"] = cnn.head_features(x)
  want = forward(latent, maps)
  model = FrozenDynPerceiver(cnn, latent)
  np.testing.assert_allclose(forward(model, images), want, atol=1e-4)
  stack, params = model.exit_stack()
  out = execution.simulate(
    stack, exits.never(), params, model.init_carry(images)
  )
  np.testing.assert_allclose(out.per_layer.logits, want, atol=1e-4)
  flops = execution.exit_flops(stack, params, model.init_carry(images))
  assert np.all(np.diff(flops.cumulative) > 0)


@heavy
def test_bad_maps_are_named(latent):
  maps = random_maps(2)
  with pytest.raises(ValueError, match=r"maps lacks \['head'\]"):
    latent({k: v for k, v in maps.items() if k != "head"})
  with pytest.raises(ValueError, match=r"maps\['stage1'\] must be \[B, 8, 8"):
    latent(dict(maps, stage1=jnp.zeros((2, 4, 4, 16))))


def test_bad_configs_are_named():
  with pytest.raises(ValueError, match="num_latents must be a multiple of 8"):
    dataclasses.replace(CFG, num_latents=12)
  with pytest.raises(ValueError, match=r"widths\[1\]=8 .*sa_heads\[1\]=3"):
    dataclasses.replace(CFG, sa_heads=(1, 3, 2, 4))
  with pytest.raises(ValueError, match="map_shapes needs 4"):
    dataclasses.replace(CFG, map_shapes=SHAPES[:3])
  with pytest.raises(ValueError, match=">= 8 channels"):
    dataclasses.replace(CFG, map_shapes=SHAPES[:3] + ((2, 2, 4),))


@heavy
def test_latent_branch_trains():
  model = LatentBranch(CFG, rngs=rngs(3))
  maps, labels = random_maps(4), jnp.arange(4) % 5

  def loss(m):
    logits = m(maps)
    return -jnp.mean(
      jnp.take_along_axis(
        jax.nn.log_softmax(logits, -1), labels[:, None, None], -1
      )
    )

  grads = nnx.grad(loss)(model)
  norms = [float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)]
  assert all(np.isfinite(norms)) and max(norms) > 0
