"""First-exit selection: from per-layer exit conditions to an exit index.

The simulated-exit protocol every early-exit paper reports (encoder_exits.md
§1.1): run all L layers, compute a boolean condition per layer, exit at the
first layer where it holds, fall back to the last layer, and gather that
layer's prediction. Layer indices are 0-based: `exit_layer = l` means layers
0..l ran, so `layers_used = exit_layer + 1`.

Axes: the exit axis L comes right after the batch axes, `cond [*batch, L]`,
`values [*batch, L, *rest]`.
"""

import jax.numpy as jnp

from jaxexit import checks
from jaxexit.typing import Array, Bool, Int


def first_exit(cond: Bool[Array, "*batch L"]) -> Int[Array, "*batch"]:
  """Index of the first True along the last axis, or L-1 if none is True.

  Args:
    cond: [*batch, L] exit condition per layer.

  Returns:
    [*batch] int32 exit layer in [0, L-1].
  """
  checks.rank_at_least("cond", cond, 1, "*batch, L")
  num_layers = cond.shape[-1]
  cond = jnp.asarray(cond, bool).at[..., num_layers - 1].set(True)
  # argmax returns the first maximum: the first True.
  return jnp.argmax(cond, axis=-1).astype(jnp.int32)


def take_at_exit(values: Array, exit_layer: Int[Array, "*batch"]) -> Array:
  """Gathers `values[*b, exit_layer[*b], ...]`.

  Args:
    values: [*batch, L, *rest] per-layer values.
    exit_layer: [*batch] int exit indices in [0, L-1].

  Returns:
    [*batch, *rest] the value at each example's exit layer.
  """
  nb = exit_layer.ndim
  if values.shape[:nb] != exit_layer.shape:
    raise ValueError(
      f"values must be [*batch, L, ...] with batch shape {exit_layer.shape}; "
      f"got values.shape={values.shape}"
    )
  idx = exit_layer.reshape(exit_layer.shape + (1,) * (values.ndim - nb))
  return jnp.take_along_axis(values, idx, axis=nb).squeeze(nb)


def layers_used(exit_layer: Int[Array, "*batch"]) -> Int[Array, "*batch"]:
  """Number of layers computed per example: `exit_layer + 1`."""
  return exit_layer + 1
