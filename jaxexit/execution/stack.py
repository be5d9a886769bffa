"""The one interface every model family hands to the execution modes.

A model with exits is described by two pure functions over a parameter
pytree, so the same model runs in every mode of `jaxexit.execution`:

  carry = layer_fn(params, layer, carry)      # apply layer `layer`
  out   = head_fn(params, layer, carry)       # its exit head -> ExitHeadOutput

`layer` is 0-based; it is a Python int when a mode unrolls layers (compacted
segments) and a traced int32 scalar inside `lax.scan`/`lax.while_loop`, so a
stacked parameter tree is indexed with `adapter.layer_slice(tree, layer)` (a
static slice or a dynamic slice, as the case may be). `adapter.exit_stack`
builds both functions from NNX modules.

`carry` is any pytree whose leaves all have the batch axis first
(`[B, T, D]` hidden states, `[B, T]` padding masks, a `[B, D]` pooled vector
of the previous layer, ...). Every per-example leaf must be batch-leading, so
`compacted` can drop exited examples from all of them; layers must treat
examples independently (no cross-batch ops; BatchNorm only with running
statistics), which is what makes per-example early exit exact.
"""

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxexit.exits.outputs import ExitHeadOutput
from jaxexit.typing import Array, Int, PyTree

LayerFn = Callable[[PyTree, "int | Array", PyTree], PyTree]
HeadFn = Callable[[PyTree, "int | Array", PyTree], ExitHeadOutput]


class ExitStack(NamedTuple):
  """L layers, each followed by an exit head.

  Attributes:
    layer_fn: `(params, layer, carry) -> carry`.
    head_fn: `(params, layer, carry) -> ExitHeadOutput`, leaves `[B, ...]`.
    num_layers: L, a Python int.
  """

  layer_fn: LayerFn
  head_fn: HeadFn
  num_layers: int


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ExitResult:
  """What a mode returns for a batch.

  Attributes:
    exit_layer: [B] int32, 0-based layer at which each example exited.
    outputs: `ExitHeadOutput` of each example's exit layer, leaves [B, ...].
    per_layer: `simulate` only: every layer's head output, leaves [B, L, ...].
    exit_condition: `simulate` only: [B, L] bool, the rule's raw decision
      per layer (before the first-exit selection and the last-layer
      fallback).
    device_layers: `early_stop` on a sharded batch only
      (`jaxexit.execution.sharded`): [n] int32, the layers each of the n
      batch shards ran before all of its examples had exited.
  """

  # Documentation types only: JAX rebuilds pytree fields with tracers.
  exit_layer: PyTree
  outputs: PyTree
  per_layer: PyTree = None
  exit_condition: PyTree = None
  device_layers: PyTree = None

  @property
  def layers_used(self) -> Int[Array, "B"]:
    """[B] number of layers computed for each example (exit_layer + 1)."""
    return self.exit_layer + 1


def batch_size_of(carry: PyTree) -> int:
  """The shared leading axis B ≥ 1 of every leaf of `carry`.

  Raises:
    ValueError: if the leaves disagree on B, or B = 0 (an empty batch is
      refused by every execution mode, see `jaxexit.execution.modes`).
  """
  leaves = jax.tree.leaves(carry)
  if not leaves:
    raise ValueError("carry has no array leaves; cannot infer the batch size")
  sizes = {int(jnp.shape(x)[0]) if jnp.ndim(x) else -1 for x in leaves}
  if len(sizes) != 1 or -1 in sizes:
    shapes = [jnp.shape(x) for x in leaves]
    raise ValueError(
      "every leaf of carry must have the batch axis first with one size; "
      f"got leaf shapes {shapes}"
    )
  batch = sizes.pop()
  if batch == 0:
    shapes = [jnp.shape(x) for x in leaves]
    raise ValueError(
      f"batch is empty (B = 0): carry leaf shapes {shapes}; the execution "
      "modes need at least one example"
    )
  return batch


def check_stack(stack: ExitStack) -> None:
  if not isinstance(stack, ExitStack):
    raise ValueError(f"stack must be an ExitStack; got {type(stack).__name__}")
  if (
    isinstance(stack.num_layers, bool)
    or not isinstance(stack.num_layers, int)
    or stack.num_layers < 1
  ):
    raise ValueError(
      f"stack.num_layers must be an int >= 1; got {stack.num_layers!r}"
    )


def head_output_zeros(
  stack: ExitStack, params: PyTree, carry: PyTree
) -> ExitHeadOutput:
  """Zeros shaped like one layer's head output (for exit buffers)."""
  shapes = jax.eval_shape(lambda p, c: stack.head_fn(p, 0, c), params, carry)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def record_exits(
  exited: Array,
  newly: Array,
  layer,
  out: ExitHeadOutput,
  exit_layer: Array,
  outputs: ExitHeadOutput,
):
  """Keeps each example's first exit: writes `layer`/`out` where `newly`.

  Args:
    exited: [B] bool, examples that had exited before this layer.
    newly: [B] bool, examples exiting at this layer (disjoint from exited).
    layer: the current layer index.
    out: this layer's head output, leaves [B, ...].
    exit_layer: [B] int32 exit layers so far.
    outputs: head outputs at the exit so far, leaves [B, ...].

  Returns:
    (exited, exit_layer, outputs) updated.
  """
  exit_layer = jnp.where(newly, jnp.asarray(layer, jnp.int32), exit_layer)
  outputs = jax.tree.map(
    lambda new, old: jnp.where(
      newly.reshape(newly.shape + (1,) * (new.ndim - 1)), new, old
    ),
    out,
    outputs,
  )
  return exited | newly, exit_layer, outputs
