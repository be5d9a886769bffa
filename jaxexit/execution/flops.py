"""FLOPs per exit of any `ExitStack`, counted by XLA on the compiled program.

One counter serves every model family (encoders, ViTs, CNN/latent stages):
each layer and each exit head is lowered and compiled on its own with a
static layer index, and XLA's cost analysis reports its floating-point
operations (a multiply-add counts as 2; zero padding of convolutions is not
counted). Numbers are per example: the batch is divided out.

  cumulative[k] = Σ_{j ≤ k} (layer[j] + head[j])

is the cost of exiting at layer k when every head on the way is evaluated
(JEI-DNN and Dynamic Perceiver count the head and gate overheads this way);
`full` = Σ_j layer[j] + head[L-1] is the full model, which evaluates only
its last head.
"""

import dataclasses

import jax
import numpy as np

from jaxexit.execution.stack import ExitStack, batch_size_of, check_stack
from jaxexit.typing import PyTree


def xla_flops(fn, *args) -> float:
  """Floating-point operations of `jax.jit(fn)(*args)` as XLA counts them.

  0.0 for a program without floating-point work (XLA then omits the entry).
  """
  analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older JAX returned one per device
    analysis = analysis[0]
  if analysis is None:
    raise ValueError("XLA's cost analysis is unavailable on this backend")
  # A program without floating-point work reports no "flops" entry.
  return float(analysis.get("flops", 0.0))


@dataclasses.dataclass(frozen=True)
class ExitFlops:
  """Per-example FLOPs of a stack.

  Attributes:
    layer: [L] FLOPs of each layer.
    head: [L] FLOPs of each exit head.
    cumulative: [L] FLOPs of exiting at each layer (heads on the way
      included).
    full: FLOPs of the full model (all layers, the last head only).
  """

  layer: np.ndarray
  head: np.ndarray
  cumulative: np.ndarray
  full: float

  @property
  def fraction(self) -> np.ndarray:
    """[L] cumulative / full: relative cost of exiting at each layer."""
    return self.cumulative / self.full


def exit_flops(stack: ExitStack, params: PyTree, carry: PyTree) -> ExitFlops:
  """Counts each layer and head of `stack` on `carry` (leaves `[B, ...]`).

  Layers run in order from `carry`, so each sees its real input shapes.
  """
  check_stack(stack)
  batch = batch_size_of(carry)
  layer, head = [], []
  for k in range(stack.num_layers):
    layer.append(
      xla_flops(lambda p, c, k=k: stack.layer_fn(p, k, c), params, carry)
      / batch
    )
    carry = jax.jit(lambda p, c, k=k: stack.layer_fn(p, k, c))(params, carry)
    head.append(
      xla_flops(lambda p, c, k=k: stack.head_fn(p, k, c), params, carry) / batch
    )
  layer, head = np.asarray(layer), np.asarray(head)
  return ExitFlops(
    layer=layer,
    head=head,
    cumulative=np.cumsum(layer + head),
    full=float(layer.sum() + head[-1]),
  )
