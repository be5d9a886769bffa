import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxexit import execution, exits
from jaxexit.methods import encoder_exits
from jaxexit.models import AlbertConfig, AlbertEncoder, BertConfig, BertEncoder
from jaxexit.models.exit_classifier import ExitClassifier, ExitHeadsConfig

L = 4


def _encoder(kind):
  if kind == "albert":
    cfg = AlbertConfig(vocab_size=50, embedding_size=8, hidden_size=16,
                       num_layers=L, num_heads=4, intermediate_size=32,
                       max_position_embeddings=16)
    return AlbertEncoder(cfg, rngs=nnx.Rngs(0))
  cfg = BertConfig(vocab_size=50, hidden_size=16, num_layers=L, num_heads=4,
                   intermediate_size=32, max_position_embeddings=16)
  return BertEncoder(cfg, rngs=nnx.Rngs(0))


def _batch(batch=6, num_classes=2):
  ids = jax.random.randint(jax.random.key(1), (batch, 10), 1, 50)
  mask = jnp.arange(10)[None, :] < jnp.array([10, 7, 5, 9, 3, 8])[:batch, None]
  if num_classes == 1:
    labels = jax.random.uniform(jax.random.key(2), (batch,)) * 5
  else:
    labels = jax.random.randint(jax.random.key(2), (batch,), 0, num_classes)
  return ids, mask, labels


@pytest.mark.parametrize("name", list(encoder_exits.METHODS))
def test_loss_is_finite_with_finite_grads(name):
  method = encoder_exits.get_method(name)
  model = ExitClassifier(_encoder("bert"), method.heads(3), rngs=nnx.Rngs(1))
  ids, mask, labels = _batch(num_classes=3)

  def loss_fn(model, stage):
    stack, params = model.exit_stack(dropout_key=jax.random.key(3))
    res = execution.simulate(stack, exits.never(),
                             params, model.embed(ids, None, mask))
    loss, _ = encoder_exits.method_loss(method, stage)(res.per_layer, labels,
                                                       jnp.int32(1))
    return loss

  for stage in range(method.stages):
    loss, grads = nnx.value_and_grad(loss_fn)(model, stage)
    assert np.isfinite(loss)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("kind", ["bert", "albert"])
@pytest.mark.parametrize("name", ["palbert", "pondernet", "pabee", "deebert",
                                  "berxit", "static"])
def test_modes_agree_for_each_method(kind, name):
  method = encoder_exits.get_method(name)
  model = ExitClassifier(_encoder(kind), method.heads(2), rngs=nnx.Rngs(1))
  ids, mask, _ = _batch()
  stack, params = model.exit_stack()
  carry = model.embed(ids, None, mask)
  rule = method.rule(method.default(L), False)
  key = jax.random.key(5) if method.rule_needs_key else None
  results = [execution.run(mode, stack, rule, params, carry, rule_inputs=key)
             for mode in execution.MODES]
  for res in results[1:]:
    np.testing.assert_array_equal(res.exit_layer, results[0].exit_layer)
    np.testing.assert_allclose(res.outputs.logits, results[0].outputs.logits,
                               rtol=1e-5, atol=1e-5)


def test_palbert_prev_pooled_is_previous_layer_pool():
  method = encoder_exits.get_method("palbert")
  model = ExitClassifier(_encoder("bert"), method.heads(2), rngs=nnx.Rngs(1))
  ids, mask, _ = _batch()
  stack, params = model.exit_stack()
  carry = model.embed(ids, None, mask)
  c1 = stack.layer_fn(params, 0, carry)
  np.testing.assert_array_equal(c1["prev_pooled"], 0.0)
  c2 = stack.layer_fn(params, 1, c1)
  np.testing.assert_allclose(c2["prev_pooled"], model.encoder.pool(c1["h"]),
                             rtol=1e-6, atol=1e-6)


def test_regression_losses():
  for name in ("pabee", "berxit", "palbert"):
    method = encoder_exits.get_method(name)
    model = ExitClassifier(_encoder("bert"), method.heads(1), rngs=nnx.Rngs(1))
    ids, mask, labels = _batch(num_classes=1)
    stack, params = model.exit_stack()
    res = execution.simulate(stack, method.rule(method.default(L), True), params,
                             model.embed(ids, None, mask))
    loss, _ = method.loss(res.per_layer, labels, jnp.int32(0))
    assert np.isfinite(loss)


def test_bad_input():
  with pytest.raises(ValueError, match="method='ee'"):
    encoder_exits.get_method("ee")
  with pytest.raises(ValueError, match="classifier='both'"):
    ExitHeadsConfig(num_classes=2, classifier="both")
  with pytest.raises(ValueError, match="dropout"):
    ExitHeadsConfig(num_classes=2, dropout=1.0)


@pytest.mark.parametrize("name", list(encoder_exits.METHODS))
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
    ref = execution.simulate(stack, method.rule(param, False), params, carry,
                             rule_inputs=rule_inputs)
    np.testing.assert_array_equal(method.exit_layer(per_layer, param, key),
                                  ref.exit_layer, err_msg=f"{name}={param}")
