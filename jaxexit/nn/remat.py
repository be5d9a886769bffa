"""Per-block rematerialisation, switched on around a training step.

A model's stack calls each block through `remat_call(fn, *args)`. Outside
`remat_blocks(policy)` that is `fn(*args)`; inside it (at trace time) it is
`jax.checkpoint(fn, policy=...)(*args)`, so the backward pass recomputes
the block's activations from its input instead of keeping them: peak
activation memory falls from L blocks' intermediates to L block inputs
plus one block's intermediates, for about one more forward pass of
compute. The gradients are the same function. `jaxexit.train` enters the
context inside its jitted step (`Precision.remat`), so no model config
changes and inference never rematerialises.

Policies (`REMAT_POLICIES`):

  full  save nothing inside a block (`jax.checkpoint_policies.
        nothing_saveable`): the least memory;
  dots  keep the matmul outputs without batch dimensions
        (`dots_with_no_batch_dims_saveable`): recompute only the
        elementwise work.
"""

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import jax

from jaxexit import checks

REMAT_POLICIES = {
  "full": jax.checkpoint_policies.nothing_saveable,
  "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
_policy: contextvars.ContextVar[str | None] = contextvars.ContextVar(
  "jaxexit_remat_policy", default=None
)


@contextlib.contextmanager
def remat_blocks(policy: str | None) -> Iterator[None]:
  """Within the block, `remat_call` rematerialises with `policy`.

  Args:
    policy: a key of `REMAT_POLICIES`, or None (no rematerialisation).
  """
  if policy is not None:
    checks.one_of("remat", policy, tuple(REMAT_POLICIES))
  token = _policy.set(policy)
  try:
    yield
  finally:
    _policy.reset(token)


def remat_call(fn: Callable[..., Any], *args: Any) -> Any:
  """`fn(*args)`, rematerialised under `remat_blocks(policy)`.

  Args:
    fn: one block, pure; it may close over parameters and other arrays
      (they become inputs of the checkpoint, so their gradients flow).
    *args: pytrees of arrays (Python ints would be traced: close over a
      static block index instead).
  """
  policy = _policy.get()
  if policy is None:
    return fn(*args)
  return jax.checkpoint(fn, policy=REMAT_POLICIES[policy])(*args)
