"""Tests for jaxexit.models.cnn_stages (StagedCNN and MultiExitCNN)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxexit import execution
from jaxexit.exits.budgeted import thresholds_rule
from jaxexit.models.cnn_stages import (
  MultiExitCNN,
  StagedCNN,
  StagedCNNConfig,
  feature_shapes,
)
from tests.jaxexit.models import modes_check
from tests.tiers import slow

CFG = StagedCNNConfig(
  num_classes=5,
  stem_channels=8,
  channels=(8, 16, 16, 32),
  depths=(1, 1, 1, 1),
  strides=(1, 2, 2, 2),
)
B, S = 8, 16


def _images(batch=B, size=S, seed=1):
  return jax.random.normal(jax.random.key(seed), (batch, size, size, 3))


def rngs(seed: int) -> nnx.Rngs:
  # RBG keys: random init compiles one program per kernel shape, and those
  # of threefry keys take ~2-4x longer to compile on CPU.
  return nnx.Rngs(jax.random.key(seed, impl="rbg"))


@nnx.jit
def forward(model, images):
  """`model(images)` compiled once (eager op-by-op dispatch is slower)."""
  return model(images)


@pytest.fixture(scope="module")
def multi_exit():
  """One model for the module (random initialisation compiles one program
  per kernel shape); tests that change it take `nnx.clone`s."""
  cnn = StagedCNN(CFG, rngs=rngs(0))
  model = MultiExitCNN(cnn, CFG.num_classes, S, rngs=rngs(1))
  model.eval()
  return model


def spread_thresholds(per_layer_logits) -> np.ndarray:
  """[L] max-softmax thresholds halfway between the two middle examples at
  each exit, so exits spread and no example sits on a threshold."""
  conf = np.sort(np.asarray(jax.nn.softmax(per_layer_logits, -1).max(-1)), 0)
  mid = conf.shape[0] // 2
  return (conf[mid - 1] + conf[mid]) / 2


def assert_modes_agree(model, images, buckets="pow2"):
  """simulate == plain forward; the 3 modes agree under a thresholds rule.

  Returns the simulate result.
  """
  stack, params = model.exit_stack()
  carry = model.init_carry(images)
  ref = forward(model, images)
  probe = execution.simulate(stack, thresholds_rule([0.0] * 4), params, carry)
  np.testing.assert_allclose(probe.per_layer.logits, ref, rtol=1e-5, atol=1e-5)
  rule = thresholds_rule(spread_thresholds(ref))
  return modes_check.assert_stack_modes_agree(
    stack, rule, params, carry, buckets=buckets
  )


@slow
@pytest.mark.parametrize("block", ["basic", "inverted_residual"])
def test_staged_cnn_shapes(block, multi_exit):
  cfg = StagedCNNConfig(
    num_classes=5,
    stem_channels=8,
    channels=(8, 16, 16, 32),
    block=block,
    expansion=2,
  )
  cnn = multi_exit.cnn if block == "basic" else StagedCNN(cfg, rngs=rngs(0))
  sizes = [S, S, S // 2, S // 4, S // 8]
  channels = (8,) + cnn.stage_channels
  assert feature_shapes(cnn, (S, S, 3)) == [
    (s, s, c) for s, c in zip(sizes, channels)
  ]
  assert cnn.head_features(jnp.ones((B, 2, 2, 32))).shape == (B, 32)
  assert forward(cnn, _images()).shape == (B, 5)
  assert cfg.total_stride == 8


@pytest.mark.parametrize("size", [12, 4])
def test_image_size_the_cnn_cannot_take_is_named(size, multi_exit):
  with pytest.raises(ValueError, match=f"height={size}.*total stride 8"):
    multi_exit.cnn.stem(jnp.zeros((B, size, size, 3)))


def test_bad_config_is_named():
  with pytest.raises(ValueError, match="channels.*4 entries"):
    StagedCNNConfig(channels=(8, 16, 32))
  with pytest.raises(ValueError, match="block='resnext'"):
    StagedCNNConfig(block="resnext")
  with pytest.raises(ValueError, match="stem_stride"):
    StagedCNNConfig(stem_stride=0)


@slow
def test_multi_exit_modes_agree_and_match_plain_forward(multi_exit):
  assert_modes_agree(multi_exit, _images())


@slow
def test_multi_exit_flops_grow_per_exit(multi_exit):
  model = multi_exit
  stack, params = model.exit_stack()
  flops = execution.exit_flops(stack, params, model.init_carry(_images()))
  assert np.all(np.diff(flops.cumulative) > 0), flops.cumulative
  # The full model evaluates only the CNN's own classifier.
  assert flops.full < flops.cumulative[-1]


def test_eval_mode_is_batch_independent_train_mode_is_not(multi_exit):
  model, x = nnx.clone(multi_exit), _images()
  alone = forward(model, x[:1])
  np.testing.assert_allclose(forward(model, x)[:1], alone, rtol=1e-5, atol=1e-5)
  model.train()
  assert not np.allclose(
    forward(model, x)[:1], forward(model, x[:1]), atol=1e-4
  )


def test_init_carry_rejects_wrong_image_size(multi_exit):
  with pytest.raises(ValueError, match="16x16"):
    multi_exit.init_carry(jnp.zeros((B, 24, 24, 3)))


def test_train_mode_updates_batch_stats(multi_exit):
  model = nnx.clone(multi_exit)
  model.train()
  before = jax.tree.map(jnp.copy, nnx.state(model, nnx.BatchStat))
  forward(model, _images())
  after = nnx.state(model, nnx.BatchStat)
  changed = jax.tree.leaves(
    jax.tree.map(lambda a, b: bool(jnp.any(a != b)), before, after)
  )
  assert all(changed)
