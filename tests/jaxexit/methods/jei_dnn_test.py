"""Tests for jaxexit.methods.jei_dnn (heads, losses, costs, gated exits)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxexit import execution
from jaxexit.exits import budgeted, confidence, gates
from jaxexit.exits.losses import cross_entropy_per_exit
from jaxexit.methods import jei_dnn
from jaxexit.models.vit import VIT_CONFIGS, ViT
from tests.jaxexit.models import modes_check
from tests.tiers import slow

CFG = VIT_CONFIGS["tiny"]
G = CFG.depth - 1
C = CFG.num_classes
B = 8


@pytest.fixture(scope="module")
def vit_stack():
  """A tiny ViT with JEI heads whose gates spread exits over the blocks."""
  model = ViT(CFG, rngs=nnx.Rngs(0))
  heads = jei_dnn.JeiHeads(CFG.width, C, G, rngs=nnx.Rngs(1))
  images = jax.random.normal(jax.random.key(3), (B, 32, 32, 3))
  # Gate l reads the standardised max-softmax of IM l: g = σ(3 z), so about
  # half of the examples pass each gate.
  maxprob = confidence.uncertainty_features(
    heads.im_logits(model.cls_per_block(images)[:, :-1])
  )[..., 0]  # [B, G]
  scale = 3.0 / jnp.std(maxprob, axis=0)
  kernel = jnp.zeros((G, 4, 1)).at[:, 0, 0].set(scale)
  heads.gates.kernel[...] = kernel
  heads.gates.bias[...] = (-scale * jnp.median(maxprob, axis=0))[:, None]
  stack, params = model.exit_stack(heads)
  carry = model.embed(images)
  return model, heads, images, stack, params, carry


@slow
def test_modes_agree_with_the_jei_gate_rule(vit_stack):
  model, heads, images, stack, params, carry = vit_stack
  ref = modes_check.assert_stack_modes_agree(
    stack, gates.jei_gate_rule(), params, carry
  )
  # The vectorised exit on simulate's per-layer gates is the rule's exit.
  np.testing.assert_array_equal(
    gates.jei_exit(ref.per_layer.score), ref.exit_layer
  )
  # And the cached-feature path (training/evaluation) gives the same.
  feats = model.cls_per_block(images)[:, :-1]
  gate_logits = heads.gate_logits(heads.im_logits(feats))
  np.testing.assert_allclose(
    jax.nn.sigmoid(gate_logits),
    ref.per_layer.score[:, :-1],
    rtol=1e-4,
    atol=1e-5,
  )
  np.testing.assert_array_equal(jei_dnn.gated_exit(gate_logits), ref.exit_layer)


@slow
def test_modes_agree_with_a_thresholds_rule(vit_stack):
  _, _, _, stack, params, carry = vit_stack
  probe = execution.simulate(stack, gates.jei_gate_rule(), params, carry)
  conf = confidence.max_softmax(probe.per_layer.logits)  # [B, L]
  q = budgeted.geometric_exit_distribution(1.0, CFG.depth)
  # Just below the fitted values: an example whose confidence equals a
  # threshold would exit or not by float rounding, which differs between
  # batch sizes (compacted runs smaller batches).
  thresholds = budgeted.fit_thresholds(np.asarray(conf), q) - 1e-4
  ref = modes_check.assert_stack_modes_agree(
    stack, budgeted.thresholds_rule(thresholds), params, carry
  )
  np.testing.assert_array_equal(
    budgeted.budgeted_exit(np.asarray(conf), thresholds), ref.exit_layer
  )


@slow
def test_exit_costs_from_xla_flops(vit_stack):
  _, _, _, stack, params, carry = vit_stack
  flops = execution.exit_flops(stack, params, carry)
  costs = jei_dnn.exit_costs(flops)
  assert costs.shape == (CFG.depth,) and costs[-1] == 1.0
  assert np.all(np.diff(costs) > 0)
  np.testing.assert_allclose(costs[:-1], flops.fraction[:-1])
  assert flops.head[0] > 0  # IM + gate overhead is counted


def test_warmup_loss_hand_value():
  im = jnp.zeros((2, 2, 3))  # G = 2: weights 3, 2
  loss = jei_dnn.warmup_loss(im, jnp.zeros((2, 3)), jnp.array([0, 2]))
  np.testing.assert_allclose(loss, (1 + 3 + 2) * math.log(3), rtol=1e-6)


def test_gate_pos_weight_cap_and_floor():
  oracle = jnp.array([0] * 6 + [1] + [3] * 3)  # N = 10, G = 3
  w = jei_dnn.gate_pos_weight(oracle, 3)
  # n_0 = 6: 4/6; n_1 = 1: 9 capped to 5; n_2 = 0 floored at 0.1: 99 → 5.
  np.testing.assert_allclose(w, [4 / 6, 5.0, 5.0], rtol=1e-6)
  one = jei_dnn.gate_pos_weight(jnp.array([2]), 2)
  assert np.all(np.isfinite(one)) and np.all(one == 5.0)


def test_gate_loss_matches_torch_bce_with_pos_weight():
  torch = pytest.importorskip("torch")
  x = jax.random.normal(jax.random.key(0), (5, 3))
  t = jnp.array(
    [[0, 1, 1], [0, 0, 1], [1, 1, 1], [0, 0, 0], [0, 1, 1]], jnp.float32
  )
  w = jnp.array([0.5, 2.0, 5.0])
  want = torch.nn.functional.binary_cross_entropy_with_logits(
    torch.tensor(np.asarray(x)),
    torch.tensor(np.asarray(t)),
    pos_weight=torch.tensor(np.asarray(w)),
  )
  np.testing.assert_allclose(jei_dnn.gate_loss(x, t, w), want.item(), rtol=1e-5)
  # Hand value at x = 0: w·log 2 for positives, log 2 for negatives.
  zero = jei_dnn.gate_loss(
    jnp.zeros((1, 2)), jnp.array([[0.0, 1.0]]), jnp.array([1.0, 3.0])
  )
  np.testing.assert_allclose(zero, (1 + 3) / 2 * math.log(2), rtol=1e-6)


@slow
def test_classifier_loss_value_is_the_unweighted_ce():
  im = jax.random.normal(jax.random.key(0), (6, 4, 5))
  labels = jnp.array([0, 1, 2, 3, 4, 0])
  probs = jax.random.dirichlet(jax.random.key(1), jnp.ones(5), (6,))[:, :4]
  ce = cross_entropy_per_exit(im, labels)
  np.testing.assert_allclose(
    jei_dnn.classifier_loss(im, labels, probs), jnp.mean(ce), rtol=1e-5
  )
  # r_x is not stop-gradient'ed, so each row is Σ_l CE_l as a function and
  # the gradient equals the unweighted one (the P weighting cancels).
  grad = jax.grad(jei_dnn.classifier_loss)(im, labels, probs)
  want = jax.grad(lambda z: jnp.mean(cross_entropy_per_exit(z, labels)))(im)
  np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-7)
  # No gradient reaches P, and P = 0 rows give 0 without NaN.
  assert np.all(
    jax.grad(jei_dnn.classifier_loss, argnums=2)(im, labels, probs) == 0
  )
  zero = jei_dnn.classifier_loss(im, labels, jnp.zeros((6, 4)))
  assert zero == 0.0


def test_oracle_and_gamma_checks():
  im = jnp.array([[[4.0, 0.0], [4.0, 0.0]]])  # right at every exit
  final = jnp.array([[4.0, 0.0]])
  costs = jnp.array([0.4, 0.7, 1.0])
  labels = jnp.array([0])
  assert jei_dnn.oracle_exit(im, final, labels, costs, 1.0).tolist() == [0]
  assert jei_dnn.oracle_exit(-im, final, labels, costs, 0.0).tolist() == [2]
  with pytest.raises(ValueError, match="gamma"):
    jei_dnn.oracle_exit(im, final, labels, costs, -0.1)


def test_bad_heads():
  with pytest.raises(ValueError, match="num_classes"):
    jei_dnn.JeiHeads(8, 1, 2, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="num_gates"):
    jei_dnn.JeiHeads(8, 3, 0, rngs=nnx.Rngs(0))
