"""The full model as a baseline: every layer, the last head, nothing else.

Realised speed-ups are measured against this, so it must be the fastest
honest full forward pass: a rolled `fori_loop` over the layers. (On the
2-core CPU a Python-unrolled stack of the same 12 layers was 1.4x slower at
batch 32 and 2.2x slower at batch 1, which would flatter every exit mode.)
"""

import functools
from collections.abc import Callable

import jax

from jaxexit.execution.stack import ExitStack, batch_size_of, check_stack
from jaxexit.exits.outputs import ExitHeadOutput
from jaxexit.typing import PyTree


@functools.lru_cache(maxsize=32)
def make_full_model(
  stack: ExitStack,
) -> Callable[[PyTree, PyTree], ExitHeadOutput]:
  """A jitted `full(params, carry) -> ExitHeadOutput` of the last layer.

  Cached per stack, so repeated measurements reuse one compiled program.
  Like every mode, it refuses an empty batch (B = 0) with a ValueError
  (raised while tracing: shapes are static).
  """
  check_stack(stack)
  last = stack.num_layers - 1

  @jax.jit
  def full(params, carry):
    batch_size_of(carry)
    carry = jax.lax.fori_loop(
      0, stack.num_layers, lambda i, c: stack.layer_fn(params, i, c), carry
    )
    return stack.head_fn(params, last, carry)

  return full
