import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxexit import execution
from jaxexit.exits import rules
from jaxexit.nn.encoder import EncoderConfig, ExitEncoder
from tests.tiers import slow

CFG = EncoderConfig(
  num_layers=3,
  d_model=16,
  num_heads=4,
  d_ff=32,
  vocab_size=50,
  max_len=12,
  num_classes=3,
)


def _model_and_tokens(batch=4):
  model = ExitEncoder(CFG, rngs=nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(1), (batch, 10), 1, 50)
  tokens = tokens.at[:, 7:].set(0)
  return model, tokens


@slow
def test_per_layer_logits_match_manual_forward():
  model, tokens = _model_and_tokens()
  stack, params = model.exit_stack()
  carry = model.embed_tokens(tokens)
  res = execution.simulate(stack, rules.never(), params, carry)
  h = carry["h"]
  for layer in range(CFG.num_layers):
    block = jax.tree.map(lambda x: x, model.layers)  # same params
    state = jax.tree.map(lambda w: w[layer], nnx.state(block))
    one = nnx.merge(nnx.graphdef(block), state)
    h = one(h, carry["mask"])
    head = nnx.merge(
      nnx.graphdef(model.heads),
      jax.tree.map(lambda w: w[layer], nnx.state(model.heads)),
    )
    np.testing.assert_allclose(
      res.per_layer.logits[:, layer], head(h), rtol=1e-5, atol=1e-5
    )


@slow
def test_padding_does_not_change_outputs():
  model, tokens = _model_and_tokens()
  stack, params = model.exit_stack()
  longer = jnp.concatenate([tokens, jnp.zeros((4, 2), tokens.dtype)], axis=1)
  a = execution.simulate(
    stack, rules.never(), params, model.embed_tokens(tokens)
  )
  b = execution.simulate(
    stack, rules.never(), params, model.embed_tokens(longer)
  )
  np.testing.assert_allclose(
    a.per_layer.logits, b.per_layer.logits, rtol=1e-5, atol=1e-5
  )


@slow
def test_modes_agree_on_encoder():
  model, tokens = _model_and_tokens(batch=8)
  stack, params = model.exit_stack()
  carry = model.embed_tokens(tokens)
  depths = jnp.array([1, 3, 2, 1, 3, 3, 2, 1])
  ref = execution.run(
    "simulate", stack, rules.preset_depth(), params, carry, rule_inputs=depths
  )
  for mode in ("early_stop", "compacted"):
    res = execution.run(
      mode, stack, rules.preset_depth(), params, carry, rule_inputs=depths
    )
    np.testing.assert_array_equal(res.exit_layer, ref.exit_layer)
    np.testing.assert_allclose(
      res.outputs.logits, ref.outputs.logits, rtol=1e-5, atol=1e-5
    )


def test_bad_config():
  with pytest.raises(ValueError, match="num_heads=3"):
    EncoderConfig(d_model=16, num_heads=3)
  with pytest.raises(ValueError, match="num_layers"):
    EncoderConfig(num_layers=0)
  model, _ = _model_and_tokens()
  with pytest.raises(ValueError, match="max_len=12"):
    model.embed_tokens(jnp.ones((1, 20), jnp.int32))
