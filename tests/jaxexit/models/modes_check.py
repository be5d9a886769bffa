"""Runs an encoder's `exit_layers()` in every execution mode with a simple
head."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxexit import execution
from jaxexit.execution.adapter import functional
from jaxexit.exits import rules
from jaxexit.exits.outputs import ExitHeadOutput

C = 3


def _stack(encoder):
  layer_fn, backbone = functional(encoder.exit_layers())
  d = encoder.cfg.hidden_size
  params = {
    "backbone": backbone,
    "pool_w": encoder.pooler.kernel[...],
    "pool_b": encoder.pooler.bias[...],
    "cls": 3.0 * jax.random.normal(jax.random.key(7), (d, C)),
  }

  def stack_layer(p, layer, carry):
    return layer_fn(p["backbone"], layer, carry)

  def head_fn(p, layer, carry):
    pooled = jnp.tanh(carry["h"][:, 0] @ p["pool_w"] + p["pool_b"][None])
    return ExitHeadOutput(logits=pooled @ p["cls"])

  return execution.ExitStack(stack_layer, head_fn, layer_fn.num_layers), params


def assert_modes_agree(encoder, ids, mask):
  """Same exits and outputs in simulate, early_stop and compacted.

  The threshold on the max softmax probability is the median over all
  (example, layer) pairs, so exits spread over layers.
  """
  stack, params = _stack(encoder)
  carry = encoder.embed(
    jnp.asarray(ids, jnp.int32), None, jnp.asarray(mask, jnp.int32)
  )
  probe = execution.simulate(stack, rules.never(), params, carry)
  conf = jax.nn.softmax(probe.per_layer.logits, -1).max(-1)  # [B, L]
  threshold = float(jnp.median(conf))
  rule = rules.memoryless(
    lambda out, layer: jax.nn.softmax(out.logits, -1).max(-1) > threshold
  )
  return assert_stack_modes_agree(stack, rule, params, carry)


def assert_stack_modes_agree(stack, rule, params, carry, **compacted_options):
  """Every execution mode gives simulate's exits and exit outputs.

  Checks that the exits spread over more than one layer (else the test
  proves nothing), then compares each mode's exit layers exactly and every
  leaf of its exit outputs (logits, scores, ...) to 1e-5. Returns the
  `simulate` result.
  """
  results = {
    mode: execution.run(
      mode,
      stack,
      rule,
      params,
      carry,
      **(compacted_options if mode == "compacted" else {}),
    )
    for mode in execution.MODES
  }
  ref = results["simulate"]
  assert len(set(np.asarray(ref.exit_layer).tolist())) > 1, ref.exit_layer
  for mode, res in results.items():
    np.testing.assert_array_equal(res.exit_layer, ref.exit_layer, err_msg=mode)
    jax.tree.map(
      lambda got, want, mode=mode: np.testing.assert_allclose(
        got, want, rtol=1e-5, atol=1e-5, err_msg=mode
      ),
      res.outputs,
      ref.outputs,
    )
  return ref
