"""The device mesh: named sizes over the axes ("data", "fsdp", "tensor").

`data` splits the batch (weights replicated), `fsdp` splits the batch and
the parameters' `embed` dimension (ZeRO-3: each device stores 1/n of every
weight and all-gathers it per layer), `tensor` splits heads, MLP width and
vocabulary (Megatron). An axis that is not named has size 1, so every mesh
has all three axes and the default rules (`jaxexit.sharding.DEFAULT_RULES`)
always apply. Usage::

  mesh = make_mesh("data=2,fsdp=2,tensor=2")  # or {"data": 2, ...}
  mesh = make_mesh({"fsdp": -1, "tensor": 2})  # -1: the rest

The axes are `AxisType.Auto` (see `jaxexit.sharding.data_parallel`): GSPMD
propagates the parameter and batch shardings through model code that has
no sharding annotations.
"""

import math
from collections.abc import Mapping, Sequence

import jax
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")
REST = -1


def parse_mesh_axes(text: str) -> dict[str, int]:
  """Parses the command-line form `"data=2,fsdp=2,tensor=2"`.

  Args:
    text: comma-separated `axis=size` entries; a size may be -1 (the rest
      of the devices).

  Returns:
    `{axis: size}` in the order written (checked by `make_mesh`).

  Raises:
    ValueError: naming an entry that is not `axis=integer`, or an axis
      written twice.
  """
  sizes = {}
  for entry in text.split(","):
    name, sep, value = (part.strip() for part in entry.partition("="))
    try:
      size = int(value) if sep and name else None
    except ValueError:
      size = None
    if size is None:
      raise ValueError(
        f"mesh entry {entry.strip()!r} of {text!r} is not axis=size "
        f"(e.g. 'data=2,fsdp=2,tensor=2')"
      )
    if name in sizes:
      raise ValueError(f"mesh axis {name!r} is given twice in {text!r}")
    sizes[name] = size
  return sizes


def mesh_shape(
  axes: Mapping[str, int] | str, num_devices: int
) -> dict[str, int]:
  """The size of every axis of `MESH_AXES` (1 when not named, -1 resolved).

  Args:
    axes: `{axis: size}` or its command-line string (`parse_mesh_axes`).
    num_devices: the devices the mesh must use, all of them.

  Returns:
    `{"data": ..., "fsdp": ..., "tensor": ...}`, multiplying to
    `num_devices`.

  Raises:
    ValueError: naming an unknown axis, a size that is neither positive nor
      -1, more than one -1, or sizes that do not multiply to `num_devices`.
  """
  sizes = dict(parse_mesh_axes(axes) if isinstance(axes, str) else axes)
  unknown = sorted(set(sizes) - set(MESH_AXES))
  if unknown:
    raise ValueError(
      f"unknown mesh axis {unknown} in {sizes}; the axes are {MESH_AXES}"
    )
  bad = {
    a: s
    for a, s in sizes.items()
    if not isinstance(s, int) or (s != REST and s < 1)
  }
  if bad:
    raise ValueError(f"mesh axis sizes {bad} must be >= 1 or -1 (the rest)")
  rest = [a for a, s in sizes.items() if s == REST]
  if len(rest) > 1:
    raise ValueError(f"only one mesh axis may be -1 (the rest); got {sizes}")
  fixed = math.prod(s for s in sizes.values() if s != REST)
  if rest:
    if num_devices % fixed:
      raise ValueError(
        f"mesh {sizes}: the other axes take {fixed} devices, which does "
        f"not divide the {num_devices} device(s), so -1 has no size"
      )
    sizes[rest[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ValueError(
      f"mesh axis sizes {sizes} multiply to {fixed}, not to the "
      f"{num_devices} device(s)"
    )
  return {a: sizes.get(a, 1) for a in MESH_AXES}


def make_mesh(
  axes: Mapping[str, int] | str | None = None,
  *,
  devices: Sequence[jax.Device] | None = None,
) -> Mesh:
  """A mesh with `Auto` axes ("data", "fsdp", "tensor") over `devices`.

  Args:
    axes: `{axis: size}` or `"data=2,fsdp=2,tensor=2"`; axes not named have
      size 1 and one size may be -1 (the rest). None: every device on
      "data".
    devices: the devices, all used (default: `jax.devices()`).

  Returns:
    A `Mesh` of shape `mesh_shape(axes, len(devices))`.

  Raises:
    ValueError: see `mesh_shape`.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape({"data": REST} if axes is None else axes, len(devices))
  return jax.make_mesh(
    tuple(shape.values()),
    MESH_AXES,
    axis_types=(AxisType.Auto,) * len(MESH_AXES),
    devices=devices,
  )
