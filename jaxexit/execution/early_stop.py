"""`early_stop`: a `lax.while_loop` over layers that stops when all exited.

Real skipping inside one compiled program: the loop ends after the layer at
which the last example of the batch exits, so at batch size 1 an example
that exits at layer l costs l+1 layers. Examples that exited earlier keep
computing (masked, their outputs frozen) until the batch is done, so with
batch > 1 the cost is that of the deepest example (a `vmap`ped while_loop
behaves the same way, jax#485); use `compacted` for batched savings.
Inference only: reverse-mode gradients do not pass through `while_loop`.
"""

import jax
import jax.numpy as jnp

from jaxexit.execution.stack import (
  ExitResult,
  ExitStack,
  batch_size_of,
  check_stack,
  head_output_zeros,
  record_exits,
)
from jaxexit.exits.outputs import ExitHeadOutput
from jaxexit.exits.rules import ExitRule
from jaxexit.typing import Array, Int, PyTree


def early_stop(
  stack: ExitStack,
  rule: ExitRule,
  params: PyTree,
  carry: PyTree,
  *,
  rule_inputs: PyTree = None,
) -> ExitResult:
  """Runs layers until every example has exited.

  Args:
    stack: the model's layers and exit heads.
    rule: the exit rule.
    params: parameter pytree for `stack`.
    carry: input pytree, every leaf `[B, ...]`.
    rule_inputs: per-batch data for `rule.init`.

  Returns:
    `ExitResult` (no `per_layer`: layers after the exit never ran).
  """
  check_stack(stack)
  batch = batch_size_of(carry)
  _, exit_layer, outputs = stop_loop(
    stack, rule, params, carry, rule.init(batch, rule_inputs)
  )
  return ExitResult(exit_layer=exit_layer, outputs=outputs)


def stop_loop(
  stack: ExitStack,
  rule: ExitRule,
  params: PyTree,
  carry: PyTree,
  rule_state: PyTree,
) -> tuple[Int[Array, ""], Int[Array, "B"], ExitHeadOutput]:
  """The loop of `early_stop` from a given initial rule state.

  `jaxexit.execution.sharded` runs it per device (`shard_map`) on a rule
  state initialised for the whole batch.

  Returns:
    (layers run, exit_layer [B], outputs at the exit, leaves [B, ...]).
  """
  batch = batch_size_of(carry)
  last = stack.num_layers - 1

  def cond(state):
    layer, _, _, exited, _, _ = state
    return (layer <= last) & ~jnp.all(exited)

  def body(state):
    layer, c, rs, exited, exit_layer, outputs = state
    c = stack.layer_fn(params, layer, c)
    out = stack.head_fn(params, layer, c)
    rs, exit_now = rule.update(rs, out, layer)
    newly = (exit_now | (layer == last)) & ~exited
    exited, exit_layer, outputs = record_exits(
      exited, newly, layer, out, exit_layer, outputs
    )
    return layer + 1, c, rs, exited, exit_layer, outputs

  state = (
    jnp.int32(0),
    carry,
    rule_state,
    jnp.zeros((batch,), bool),
    jnp.full((batch,), last, jnp.int32),
    head_output_zeros(stack, params, carry),
  )
  layers_run, *_, exit_layer, outputs = jax.lax.while_loop(cond, body, state)
  return layers_run, exit_layer, outputs
