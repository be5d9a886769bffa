"""`simulate`: run every layer, decide exits with masks.

The exact semantics every early-exit paper reports (encoder_exits.md §1.1):
all L layers run for the whole batch, the rule is applied after each layer,
and each example takes the prediction of its first exiting layer (last layer
if none). Differentiable (a `lax.scan`), so it is also the training forward
pass: `ExitResult.per_layer` holds every head's output for the exit losses.
"""

import jax
import jax.numpy as jnp

from jaxexit.execution.stack import (
  ExitResult,
  ExitStack,
  batch_size_of,
  check_stack,
)
from jaxexit.exits.rules import ExitRule
from jaxexit.exits.select import first_exit, take_at_exit
from jaxexit.typing import PyTree


def simulate(
  stack: ExitStack,
  rule: ExitRule,
  params: PyTree,
  carry: PyTree,
  *,
  rule_inputs: PyTree = None,
  unroll: int | bool = 1,
) -> ExitResult:
  """Runs all layers and selects each example's first exit.

  Args:
    stack: the model's layers and exit heads.
    rule: the exit rule.
    params: parameter pytree passed to `stack.layer_fn`/`head_fn`.
    carry: input pytree, every leaf `[B, ...]`.
    rule_inputs: per-batch data for `rule.init` (a key, preset depths).
    unroll: forwarded to `lax.scan` (`True` unrolls the layer loop, which
      trained faster than a rolled scan on 2 CPU cores: 2.6 s vs 3.8 s per
      step of a 6-layer encoder).

  Returns:
    `ExitResult` with `per_layer` leaves `[B, L, ...]` and
    `exit_condition [B, L]`.
  """
  check_stack(stack)
  batch = batch_size_of(carry)
  rule_state = rule.init(batch, rule_inputs)

  def body(state, layer):
    c, rs = state
    c = stack.layer_fn(params, layer, c)
    out = stack.head_fn(params, layer, c)
    rs, exit_now = rule.update(rs, out, layer)
    return (c, rs), (out, exit_now)

  layers = jnp.arange(stack.num_layers, dtype=jnp.int32)
  _, (per_layer_LB, cond_LB) = jax.lax.scan(
    body, (carry, rule_state), layers, unroll=unroll
  )
  per_layer = jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1), per_layer_LB)
  cond_BL = jnp.moveaxis(cond_LB, 0, 1)  # [B, L]
  exit_layer = first_exit(cond_BL)
  outputs = jax.tree.map(lambda x: take_at_exit(x, exit_layer), per_layer)
  return ExitResult(
    exit_layer=exit_layer,
    outputs=outputs,
    per_layer=per_layer,
    exit_condition=cond_BL,
  )
