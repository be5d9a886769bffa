import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxexit import execution, exits
from jaxexit.methods import encoder_exits
from jaxexit.models import AlbertConfig, AlbertEncoder, BertConfig, BertEncoder
from jaxexit.models.exit_classifier import (
  EncoderExitHeadsConfig,
  ExitClassifier,
)
from tests.tiers import fast_only, heavy

L = 4
# The fast tier checks one method (PABEE) for the vectorised exit and the
# execution modes; every method runs in the heavy tier.
METHODS = list(encoder_exits.METHODS)


def _encoder(kind):
  if kind == "albert":
    cfg = AlbertConfig(
      vocab_size=50,
      embedding_size=8,
      hidden_size=16,
      num_layers=L,
      num_heads=4,
      intermediate_size=32,
      max_position_embeddings=16,
    )
    return AlbertEncoder(cfg, rngs=nnx.Rngs(0))
  cfg = BertConfig(
    vocab_size=50,
    hidden_size=16,
    num_layers=L,
    num_heads=4,
    intermediate_size=32,
    max_position_embeddings=16,
  )
  return BertEncoder(cfg, rngs=nnx.Rngs(0))


def _batch(batch=6, num_classes=2):
  ids = jax.random.randint(jax.random.key(1), (batch, 10), 1, 50)
  mask = jnp.arange(10)[None, :] < jnp.array([10, 7, 5, 9, 3, 8])[:batch, None]
  if num_classes == 1:
    labels = jax.random.uniform(jax.random.key(2), (batch,)) * 5
  else:
    labels = jax.random.randint(jax.random.key(2), (batch,), 0, num_classes)
  return ids, mask, labels


@heavy
@pytest.mark.parametrize("name", METHODS)
def test_loss_is_finite_with_finite_grads(name):
  method = encoder_exits.get_method(name)
  model = ExitClassifier(_encoder("bert"), method.heads(3), rngs=nnx.Rngs(1))
  ids, mask, labels = _batch(num_classes=3)

  def loss_fn(model, stage):
    stack, params = model.exit_stack(dropout_key=jax.random.key(3))
    res = execution.simulate(
      stack, exits.never(), params, model.embed(ids, None, mask)
    )
    loss, _ = method.loss(res.per_layer, labels, jnp.int32(1), stage)
    return loss

  for stage in range(method.stages):
    loss, grads = nnx.value_and_grad(loss_fn)(model, stage)
    assert np.isfinite(loss)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("kind", fast_only(["bert", "albert"], "bert"))
@pytest.mark.parametrize(
  "name",
  fast_only(
    [
      "palbert",
      "palbert_per_layer",
      "pondernet",
      "pabee",
      "deebert",
      "berxit",
      "static",
    ],
    "pabee",
  ),
)
@heavy  # the fast tier has modes_test and adapter_test for the modes
def test_modes_agree_for_each_method(kind, name):
  method = encoder_exits.get_method(name)
  model = ExitClassifier(_encoder(kind), method.heads(2), rngs=nnx.Rngs(1))
  ids, mask, _ = _batch()
  stack, params = model.exit_stack()
  carry = model.embed(ids, None, mask)
  rule = method.rule(method.paper_default(L), 2)
  key = jax.random.key(5) if method.rule_needs_key else None
  results = [
    execution.run(mode, stack, rule, params, carry, rule_inputs=key)
    for mode in execution.MODES
  ]
  for res in results[1:]:
    np.testing.assert_array_equal(res.exit_layer, results[0].exit_layer)
    np.testing.assert_allclose(
      res.outputs.logits, results[0].outputs.logits, rtol=1e-5, atol=1e-5
    )


def test_palbert_prev_features_are_previous_layer_features():
  method = encoder_exits.get_method("palbert")
  model = ExitClassifier(_encoder("bert"), method.heads(2), rngs=nnx.Rngs(1))
  ids, mask, _ = _batch()
  stack, params = model.exit_stack()
  carry = model.embed(ids, None, mask)
  c1 = stack.layer_fn(params, 0, carry)
  np.testing.assert_array_equal(c1["prev_features"], carry["h"][:, 0])
  c2 = stack.layer_fn(params, 1, c1)
  np.testing.assert_array_equal(c2["prev_features"], c1["h"][:, 0])
  # λ_n reads [pooled_n; pooled_{n-1}], pooled_0 := 0 (§3.1).
  pool = model.encoder.pool
  for layer, before, after in ((0, None, c1), (1, c1, c2)):
    prev = (
      jnp.zeros_like(pool(after["h"])) if before is None else pool(before["h"])
    )
    want = model.heads.halting(jnp.concatenate([pool(after["h"]), prev], -1))
    got = stack.head_fn(params, layer, after).halt
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@heavy
def test_regression_losses():
  for name in ("pabee", "berxit", "palbert"):
    method = encoder_exits.get_method(name)
    model = ExitClassifier(_encoder("bert"), method.heads(1), rngs=nnx.Rngs(1))
    ids, mask, labels = _batch(num_classes=1)
    stack, params = model.exit_stack()
    res = execution.simulate(
      stack,
      method.rule(method.paper_default(L), 1),
      params,
      model.embed(ids, None, mask),
    )
    loss, _ = method.loss(res.per_layer, labels, jnp.int32(0), 0)
    assert np.isfinite(loss)


def test_bad_input():
  with pytest.raises(ValueError, match="method='ee'"):
    encoder_exits.get_method("ee")
  with pytest.raises(ValueError, match="classifier='both'"):
    EncoderExitHeadsConfig(num_classes=2, classifier="both")
  with pytest.raises(ValueError, match="dropout"):
    EncoderExitHeadsConfig(num_classes=2, dropout=1.0)
  with pytest.raises(ValueError, match="pooling='max'.*cls_pooler"):
    EncoderExitHeadsConfig(num_classes=2, pooling="max")
  with pytest.raises(ValueError, match="prior='flat'.*depth_matched"):
    encoder_exits.get_method("palbert", prior="flat")
  with pytest.raises(ValueError, match="num_classes=1"):
    encoder_exits.entropy_threshold(0.5, 1)


@pytest.mark.parametrize(
  "prior,lambda_p", [("paper", 0.1), ("depth_matched", 1 - 0.9**3)]
)
def test_ponder_loss_uses_the_named_prior(prior, lambda_p):
  """The loss's KL is against the prior its setting names (L = 4 here)."""
  method = encoder_exits.get_method("palbert", prior=prior)
  halt = jnp.full((2, L), 0.3)
  out = exits.ExitHeadOutput(logits=jnp.zeros((2, L, 2)), halt=halt)
  loss, _ = method.loss(out, jnp.array([0, 1]), jnp.int32(0), 0)
  p = exits.epsilon_floor(
    exits.halting_distribution(halt), encoder_exits.PALBERT_EPS
  )
  prior_p = exits.truncated_geometric_prior(lambda_p, L)
  expected = exits.ponder_loss(
    encoder_exits.per_exit_loss(out.logits, jnp.array([0, 1])),
    p,
    prior_p,
    encoder_exits.PALBERT_BETA,
  )
  np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_entropy_thresholds_are_fractions_of_ln_c():
  """A fraction ≥ 1 of ln C exits everything at layer 1; 0.5 of ln C on 2
  and on 10 classes is the same relative confidence."""
  method = encoder_exits.get_method("deebert")
  for c in (2, 10):
    logits = jnp.zeros((3, L, c)).at[:, 2, 0].set(50.0)  # confident at 3
    out = exits.ExitHeadOutput(logits=logits)
    np.testing.assert_array_equal(method.exit_layer(out, 0.5, None), [2, 2, 2])
    np.testing.assert_array_equal(method.exit_layer(out, 1.01, None), [0, 0, 0])


@pytest.mark.parametrize("pooling", ["cls_pooler", "mean", "cls"])
def test_exit_pooling_modes(pooling):
  """Exits read h the way `pooling` says; padding never enters the mean."""
  method = encoder_exits.get_method("pabee")
  heads = encoder_exits.dataclasses.replace(method.heads(2), pooling=pooling)
  model = ExitClassifier(_encoder("bert"), heads, rngs=nnx.Rngs(1))
  ids, mask, _ = _batch()
  stack, params = model.exit_stack()
  carry = stack.layer_fn(params, 0, model.embed(ids, None, mask))
  out = stack.head_fn(params, 0, carry)
  h = carry["h"]
  if pooling == "cls_pooler":
    pooled = model.encoder.pool(h)
  elif pooling == "cls":
    pooled = h[:, 0]
  else:
    m = np.asarray(mask, np.float32)[..., None]
    pooled = (np.asarray(h) * m).sum(1) / m.sum(1)
  kernel = model.heads.classifier.kernel[...][0]
  bias = model.heads.classifier.bias[...][0]
  np.testing.assert_allclose(
    out.logits, pooled @ kernel + bias[None], rtol=1e-5, atol=1e-5
  )


@pytest.mark.parametrize("name", fast_only(METHODS, "pabee"))
def test_vectorised_exit_equals_rule(name):
  method = encoder_exits.get_method(name)
  model = ExitClassifier(_encoder("bert"), method.heads(2), rngs=nnx.Rngs(1))
  ids, mask, _ = _batch()
  stack, params = model.exit_stack()
  carry = model.embed(ids, None, mask)
  per_layer = execution.simulate(stack, exits.never(), params, carry).per_layer
  key = jax.random.key(7)
  for param in method.sweep(L):
    rule_inputs = key if method.rule_needs_key else None
    ref = execution.simulate(
      stack, method.rule(param, 2), params, carry, rule_inputs=rule_inputs
    )
    np.testing.assert_array_equal(
      method.exit_layer(per_layer, param, key),
      ref.exit_layer,
      err_msg=f"{name}={param}",
    )
