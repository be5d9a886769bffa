"""Rules: which mesh axes shard each logical axis; the spec of one array.

Following maxtext's `logical_axis_rules` and levanter's fsdp/tensor axis
mapping, the default rules are

  batch    -> ("data", "fsdp")   activations and data
  embed    -> "fsdp"             every weight, 1/fsdp per device (ZeRO-3)
  heads, kv_heads, mlp, vocab -> "tensor"   Megatron tensor parallelism

and every other logical axis (layers, head_dim, state, conv channels,
spatial, None) is replicated. GSPMD inserts the all-gathers (fsdp: the
weights of a layer before its matmuls) and reduce-scatters (the gradients)
that these shardings imply; the program computes the same function as on
one device.

A dimension that its mesh axes do not divide, or whose mesh axis already
shards another dimension of the same array, is replicated instead; the
decision is logged once per (table pattern, reason) on the
"jaxexit.sharding" logger. On a mesh without some of these axes (the 1-D
"data" mesh of `data_parallel_mesh`), `default_rules` drops them: the
weights stay replicated there and the batch splits over "data".
"""

import logging
import math
import types
from collections.abc import Mapping, Sequence

from jax.sharding import PartitionSpec as P

from jaxexit.sharding.families import Axes

MeshAxes = str | tuple[str, ...] | None
Rules = Mapping[str, MeshAxes]

DEFAULT_RULES: Rules = types.MappingProxyType(
  {
    "batch": ("data", "fsdp"),
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "vocab": "tensor",
  }
)

logger = logging.getLogger("jaxexit.sharding")
_logged: set[tuple[str, str]] = set()


def default_rules(mesh_axes: Sequence[str]) -> dict[str, MeshAxes]:
  """`DEFAULT_RULES` without the mesh axes that `mesh_axes` lacks."""
  rules = {}
  for name, value in DEFAULT_RULES.items():
    axes = (value,) if isinstance(value, str) else value
    kept = tuple(a for a in axes if a in mesh_axes)
    rules[name] = kept[0] if len(kept) == 1 else kept or None
  return rules


def check_rules(
  rules: Rules, mesh_axes: Sequence[str]
) -> dict[str, tuple[str, ...]]:
  """`rules` with every value a tuple of mesh axes (None: `()`).

  Raises:
    ValueError: naming a rule whose mesh axis is not one of `mesh_axes`.
  """
  checked = {}
  for name, value in rules.items():
    axes = (value,) if isinstance(value, str) else value or ()
    unknown = [a for a in axes if a not in mesh_axes]
    if unknown:
      raise ValueError(
        f"sharding rule {name!r} -> {value!r} names mesh axis {unknown}, "
        f"not one of the mesh's axes {tuple(mesh_axes)}"
      )
    checked[name] = tuple(axes)
  return checked


def _replicated(pattern: str, reason: str) -> None:
  if (pattern, reason) not in _logged:
    _logged.add((pattern, reason))
    logger.warning("sharding %r: %s", pattern, reason)


def logical_spec(
  axes: Axes,
  shape: tuple[int, ...],
  mesh_shape: Mapping[str, int],
  rules: Mapping[str, tuple[str, ...]],
  pattern: str,
) -> P:
  """The `PartitionSpec` of an array from its dimensions' logical names.

  Args:
    axes: a logical name (or None) per dimension of the array.
    shape: the array's shape.
    mesh_shape: `{mesh axis: size}` (`mesh.shape`).
    rules: logical name -> mesh axes, as `check_rules` returns them.
    pattern: the table row that named the axes (keys the log).

  Returns:
    One entry per dimension: a mesh axis, a tuple of them, or None
    (replicated); `P()` when `axes` does not have one name per dimension.
  """
  if len(axes) != len(shape):
    _replicated(
      pattern,
      f"an array of shape {shape} does not have one dimension per "
      f"logical axis {axes}; replicated",
    )
    return P()
  spec, used = [], set()
  for dim, (name, size) in enumerate(zip(axes, shape)):
    mesh_axes = rules.get(name, ()) if name is not None else ()
    devices = math.prod(mesh_shape[a] for a in mesh_axes)
    reason = None
    if used & set(mesh_axes):
      reason = f"mesh axes {mesh_axes} already shard another dimension"
    elif size % devices:
      reason = (
        f"size {size} is not divisible by mesh axes {mesh_axes} of "
        f"{devices} devices"
      )
    if reason:
      _replicated(
        pattern, f"dimension {dim} ({name!r}): {reason}; it is replicated"
      )
      mesh_axes = ()
    used |= set(mesh_axes)
    spec.append(
      None
      if not mesh_axes
      else mesh_axes[0]
      if len(mesh_axes) == 1
      else mesh_axes
    )
  return P(*spec)
