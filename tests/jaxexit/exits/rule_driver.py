"""Drives an `ExitRule` layer by layer in plain Python (test helper).

The reference semantics every execution mode implements: `init`, then one
`update` per layer, keep each example's first exit, force the last layer.
Tests compare this against each rule's vectorised twin.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxexit.exits.outputs import ExitHeadOutput
from jaxexit.exits.rules import ExitRule


def layer_output(per_layer: ExitHeadOutput, layer: int) -> ExitHeadOutput:
  """Slices layer `layer` out of an output whose leaves are [B, L, ...]."""
  return jax.tree.map(lambda x: x[:, layer], per_layer)


def drive(
  rule: ExitRule,
  per_layer: ExitHeadOutput,
  *,
  rule_inputs=None,
  traced_layer: bool = False,
) -> np.ndarray:
  """Runs `rule` over every layer and returns the [B] int exit layers.

  Args:
    rule: the rule under test.
    per_layer: head outputs with leaves [B, L, ...].
    rule_inputs: forwarded to `rule.init`.
    traced_layer: jit `update` and pass the layer as a traced int32 scalar
      (how `simulate`'s `lax.scan` calls it) instead of a Python int.
  """
  leaves = jax.tree.leaves(per_layer)
  batch, num_layers = leaves[0].shape[:2]
  update = jax.jit(rule.update) if traced_layer else rule.update
  state = rule.init(batch, rule_inputs)
  exit_layer = np.full((batch,), num_layers - 1, np.int32)
  done = np.zeros((batch,), bool)
  for layer in range(num_layers):
    arg = jnp.int32(layer) if traced_layer else layer
    state, now = update(state, layer_output(per_layer, layer), arg)
    now = np.asarray(now, bool)
    assert now.shape == (batch,), now.shape
    if layer == num_layers - 1:
      now = np.ones_like(now)
    new = now & ~done
    exit_layer[new] = layer
    done |= now
  return exit_layer


def unchecked(fn):
  """`fn` without the jaxtyping/beartype wrapper the test hook adds.

  Under the hook a shape mismatch is caught first as a `TypeCheckError`;
  this reaches the library's own `ValueError`, which is what users without
  the hook see.
  """
  return getattr(fn, "__wrapped__", fn)
