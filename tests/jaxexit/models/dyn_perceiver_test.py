"""Tests for jaxexit.models.dyn_perceiver."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxexit import execution
from jaxexit.exits.losses import cross_entropy_per_exit
from jaxexit.models.cnn_stages import StagedCNN, StagedCNNConfig
from jaxexit.models.dyn_perceiver import (
  DynPerceiver,
  DynPerceiverConfig,
  adaptive_pool_matrix,
  dyn_perceiver_loss,
)
from jaxexit.models.efficientnet_lite import (
  EfficientNetLite,
  EfficientNetLiteConfig,
)
from tests.jaxexit.models.cnn_stages_test import (
  assert_modes_agree,
  forward,
  rngs,
)
from tests.tiers import heavy

CNN = StagedCNNConfig(
  num_classes=5,
  stem_channels=8,
  channels=(8, 16, 16, 32),
  depths=(1, 1, 1, 1),
  strides=(1, 2, 2, 2),
)
CFG = DynPerceiverConfig(
  num_classes=5,
  image_size=16,
  num_latents=16,
  sa_depths=(1, 1, 1, 1),
  sa_heads=(1, 2, 2, 4),
  pool_size=4,
)
B = 4


def _images(batch=B, size=16, seed=1):
  return jax.random.normal(jax.random.key(seed), (batch, size, size, 3))


@pytest.fixture(scope="module")
def model():
  """Random weights in eval mode; latents redrawn with std 1.

  At the official init (std 0.02) all latents attend alike, so the token
  mixer's LayerNorm over tokens divides by a spread of ~0.02 and magnifies
  float32 rounding ~50x; with std-1 latents jit and eager agree to ~1e-6
  and the 1e-5 parity checks test the code paths, not the conditioning.
  """
  m = DynPerceiver(CFG, StagedCNN(CNN, rngs=rngs(0)), rngs=rngs(1))
  m.latent[...] = jax.random.normal(jax.random.key(5), m.latent[...].shape)
  m.eval()
  return m


@heavy
def test_shapes(model):
  x = _images()
  graphdef, state = nnx.split(model)
  out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
  assert out.shape == (B, 4, 5)
  carry = model.init_carry(x)
  assert carry["x3_in"].shape == (B, 8, 8, 16)  # enters CNN stage 3
  assert carry["x4_in"].shape == (B, 4, 4, 16)
  assert carry["x4_out"].shape == (B, 2, 2, 32)
  assert carry["z3"].shape == (B, 4, 16)  # L/4 tokens
  assert carry["z4"].shape == (B, 2, 16)  # L/8 tokens
  assert carry["logits"].shape == (B, 4, 5)
  assert model.latent[...].shape == (16, 8)  # L x stem channels


def test_adaptive_pool_matrix_matches_torch_windows():
  m = adaptive_pool_matrix(5, 3)  # windows [0,2), [1,4), [3,5)
  np.testing.assert_allclose(
    m, [[0.5, 0.5, 0, 0, 0], [0, 1 / 3, 1 / 3, 1 / 3, 0], [0, 0, 0, 0.5, 0.5]]
  )
  np.testing.assert_allclose(adaptive_pool_matrix(4, 4), np.eye(4))


@pytest.mark.heavy  # compiles the whole model several times
def test_modes_agree_and_simulate_matches_plain_forward(model):
  assert_modes_agree(model, _images(), buckets=(2,))


@heavy
def test_exit_flops_grow_in_compute_order(model):
  stack, params = model.exit_stack()
  flops = execution.exit_flops(stack, params, model.init_carry(_images()))
  assert np.all(np.diff(flops.cumulative) > 0), flops.cumulative
  # y_e3 needs CNN stages 1-2 plus most of the latent branch, well under
  # half of the whole model here.
  assert flops.cumulative[0] < flops.full


@heavy
def test_eval_exits_are_batch_independent(model):
  x = _images()
  other = x.at[2:].set(_images(seed=9)[2:])
  np.testing.assert_allclose(
    forward(model, x)[:2], forward(model, other)[:2], rtol=1e-5, atol=1e-5
  )


@heavy
def test_wrong_image_size_is_named(model):
  with pytest.raises(ValueError, match="16x16.*image_size=16"):
    model.init_carry(jnp.zeros((2, 24, 24, 3)))


def small_cnn():
  """Built abstractly: these constructors raise before using any weight."""
  return nnx.eval_shape(
    lambda: StagedCNN(
      dataclasses.replace(CNN, channels=(8, 8, 8, 8)), rngs=nnx.Rngs(0)
    )
  )


def test_image_size_the_branch_cannot_take_is_named():
  with pytest.raises(ValueError, match="height=12 .*total stride 8"):
    DynPerceiver(
      dataclasses.replace(CFG, image_size=12), small_cnn(), rngs=rngs(1)
    )


def test_bad_config_is_named():
  with pytest.raises(ValueError, match="multiple of 8.*12"):
    DynPerceiverConfig(num_latents=12)
  with pytest.raises(ValueError, match="sa_heads needs 4"):
    DynPerceiverConfig(sa_heads=(1, 2))
  with pytest.raises(ValueError, match=r"sa_heads\[1\]=3"):
    DynPerceiver(
      dataclasses.replace(CFG, sa_heads=(1, 3, 1, 1)), small_cnn(), rngs=rngs(1)
    )


@heavy
def test_loss_is_weighted_ce_plus_self_distillation():
  logits = jax.random.normal(jax.random.key(0), (B, 4, 5)) * 3
  labels = jnp.arange(B) % 5
  ce = np.asarray(cross_entropy_per_exit(logits, labels)).mean(0)
  loss, metrics = dyn_perceiver_loss(logits, labels, kd_weight=0.0)
  np.testing.assert_allclose(
    loss, ce @ np.array([0.5, 0.5, 1.0, 1.0]), rtol=1e-5
  )
  full, metrics = dyn_perceiver_loss(logits, labels)
  np.testing.assert_allclose(full - loss, 0.5 * metrics["kd"], rtol=1e-5)
  assert metrics["kd"] > 0
  assert set(metrics) == {"ce", "kd", "acc1", "acc2", "acc3", "acc4"}
  smooth, _ = dyn_perceiver_loss(
    logits, labels, kd_weight=0.0, weights=(1.0,) * 4, label_smoothing=0.1
  )
  targets = optax.smooth_labels(jax.nn.one_hot(labels, 5), 0.1)
  want = optax.softmax_cross_entropy(logits, targets[:, None]).mean(0).sum()
  np.testing.assert_allclose(smooth, want, rtol=1e-5)


def test_loss_teacher_gets_no_distillation_gradient():
  logits = jax.random.normal(jax.random.key(0), (B, 4, 5))
  labels = jnp.arange(B) % 5
  kd_only = lambda z: dyn_perceiver_loss(z, labels, weights=(0.0,) * 4)[0]
  grad = jax.grad(kd_only)(logits)
  assert np.all(np.asarray(grad[:, -1]) == 0)
  assert np.any(np.asarray(grad[:, :-1]) != 0)


def test_loss_bad_input_is_named():
  logits, labels = jnp.zeros((B, 4, 5)), jnp.zeros((B,), jnp.int32)
  with pytest.raises(ValueError, match="one entry per exit"):
    dyn_perceiver_loss(logits, labels, weights=(1.0, 1.0))
  with pytest.raises(ValueError, match="label_smoothing"):
    dyn_perceiver_loss(logits, labels, label_smoothing=1.0)


@pytest.mark.heavy  # compiles the whole model several times
def test_train_forward_updates_batch_stats_and_grads_reach_every_part(model):
  m = nnx.clone(model)
  m.train()
  labels = jnp.arange(B) % 5

  @nnx.jit
  def grad_fn(m, x):
    return nnx.grad(lambda m: dyn_perceiver_loss(m(x), labels)[0])(m)

  before = jax.tree.map(jnp.copy, nnx.state(m, nnx.BatchStat))
  grads = grad_fn(m, _images())
  after = nnx.state(m, nnx.BatchStat)
  assert all(
    jax.tree.leaves(
      jax.tree.map(lambda a, b: bool(jnp.any(a != b)), before, after)
    )
  )
  zero = [
    jax.tree_util.keystr(path)
    for path, g in jax.tree_util.tree_leaves_with_path(grads)
    if not jnp.any(g != 0)
  ]
  assert not zero, zero


@heavy
def test_accepts_the_efficientnet_lite_branch():
  """Interface check, traced abstractly (no weights drawn or compiled)."""
  branch_cfg = EfficientNetLiteConfig(num_classes=5)

  def build():
    branch = EfficientNetLite(branch_cfg, rngs=nnx.Rngs(0))
    return DynPerceiver(
      dataclasses.replace(CFG, image_size=64), branch, rngs=nnx.Rngs(1)
    )

  m = nnx.eval_shape(build)
  assert [s[-1] for s in m.map_shapes] == [32, 24, 40, 112, 320]
  graphdef, state = nnx.split(m)
  x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  out = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, x)
  assert out.shape == (2, 4, 5)
