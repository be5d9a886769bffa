"""Data-parallel helpers: a 1-D "data" mesh, batch sharding, replication.

The first multi-device layer of jaxexit, kept for the notebooks' timing
cells: the weights replicated, the batch B split over the mesh. For
parameter sharding (FSDP, tensor parallel) build a 3-axis mesh with
`jaxexit.sharding.make_mesh` and place the state with
`jaxexit.sharding.shard_state`. Usage::

  mesh = data_parallel_mesh()
  with jax.set_mesh(mesh):
    state = replicate(state, mesh)
    state, metrics = step(graphdef, state, shard_batch(batch, mesh), rng)

The mesh axis is `AxisType.Auto`: sharding propagates through GSPMD, so
model code written without sharding annotations still compiles (`Explicit`
axes, `jax.make_mesh`'s default on JAX 0.10, would reject some reshapes and
gathers of a sharded batch).

`time_data_parallel` measures what the mesh buys: one forward pass of a
model on one device against the same global batch split over the mesh.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxexit import checks, timing
from jaxexit.typing import Array, PyTree

DATA = "data"


def data_parallel_mesh(num_devices: int | None = None) -> Mesh:
  """Returns a 1-D mesh with axis "data" over the first `num_devices` devices.

  Args:
    num_devices: how many devices (default: all of `jax.devices()`).

  Returns:
    A `Mesh` of shape `{"data": num_devices}` with an `Auto` axis.
  """
  available = len(jax.devices())
  n = available if num_devices is None else num_devices
  checks.positive_int("num_devices", n)
  if n > available:
    raise ValueError(
      f"num_devices={n} exceeds the {available} available device(s)"
    )
  return jax.make_mesh(
    (n,), (DATA,), axis_types=(AxisType.Auto,), devices=jax.devices()[:n]
  )


def batch_device_count(mesh: Mesh, axis: str | tuple[str, ...]) -> int:
  """The devices that split a batch over mesh axis `axis` (or axes).

  Raises:
    ValueError: naming an axis that is not one of the mesh's.
  """
  axes = (axis,) if isinstance(axis, str) else tuple(axis)
  unknown = [a for a in axes if a not in mesh.shape]
  if unknown:
    raise ValueError(
      f"mesh axis {unknown} of axis={axis!r} is not among the mesh's "
      f"axes {tuple(mesh.axis_names)}"
    )
  return math.prod(mesh.shape[a] for a in axes)


def shard_batch(
  batch: PyTree, mesh: Mesh, axis: str | tuple[str, ...] = DATA
) -> PyTree:
  """Places every leaf of `batch` split along its leading axis over `axis`.

  Args:
    batch: a pytree of arrays, each [B, ...] with one common B.
    mesh: the mesh.
    axis: the mesh axis to split B over, or a tuple of axes (B split over
      their product, e.g. `("data", "fsdp")`, the default rules' `batch`).

  Returns:
    The batch as `jax.Array`s with `NamedSharding(mesh, P(axis))`.
  """
  n = batch_device_count(mesh, axis)
  sharding = NamedSharding(mesh, P(axis))

  def put(x):
    size = np.shape(x)[0] if np.ndim(x) else None
    if size is None or size % n:
      raise ValueError(
        f"batch size {size} (leaf shape {np.shape(x)}) must be divisible "
        f"by the device count {n} of mesh axis {axis!r}"
      )
    return jax.device_put(x, sharding)

  return jax.tree.map(put, batch)


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
  """Places a full copy of every leaf of `tree` on every device of `mesh`."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def constrain(x: Array, spec: P | None) -> Array:
  """`with_sharding_constraint(x, spec)`, or `x` unchanged if spec is None.

  A bare `PartitionSpec` needs a mesh in context (`with jax.set_mesh(mesh)`).
  """
  if spec is None:
    return x
  return jax.lax.with_sharding_constraint(x, spec)


@dataclasses.dataclass(frozen=True)
class DataParallelTiming:
  """One forward pass timed on one device and data-parallel over a mesh.

  Attributes:
    batch: the global batch size B of every timed call.
    devices: devices of the mesh's "data" axis (1: no mesh was timed).
    device_kind: the devices' kind, e.g. "TPU v2" or "cpu".
    one_device: the whole batch on the first device.
    mesh: the batch split over the mesh, the weights replicated; None when
      there is one device.
    max_abs_diff: largest |one-device output - mesh output| over every
      floating leaf (0.0 when there is one device).
  """

  batch: int
  devices: int
  device_kind: str
  one_device: timing.Timing
  mesh: timing.Timing | None
  max_abs_diff: float

  @property
  def speedup(self) -> float | None:
    """Median one-device time over median mesh time (None: one device)."""
    return (
      None if self.mesh is None else (self.one_device.median / self.mesh.median)
    )

  def markdown(self) -> str:
    """A table of both rows: seconds per forward, examples/s, speed-up."""
    kind = self.device_kind
    rows = [(f"1 {kind}", self.batch, self.one_device, 1.0)]
    if self.mesh is not None:
      rows.append(
        (
          f"{self.devices} {kind} (mesh axis `{DATA}`)",
          self.batch // self.devices,
          self.mesh,
          self.speedup,
        )
      )
    lines = [
      "| devices | batch per device | ms / forward (median) | "
      "examples / s | speed-up |",
      "|---|---:|---:|---:|---:|",
    ]
    lines += [
      f"| {name} | {per_device} | {1e3 * t.median:.2f} | "
      f"{self.batch / t.median:,.0f} | {speedup:.2f}x |"
      for name, per_device, t, speedup in rows
    ]
    if self.mesh is not None:
      lines.append(
        f"\nGlobal batch {self.batch}; the two outputs differ by "
        f"at most {self.max_abs_diff:.2g}."
      )
    return "\n".join(lines)


def time_data_parallel(
  forward: Callable[[Any, PyTree], PyTree],
  model: nnx.Module,
  batch: PyTree,
  mesh: Mesh | None = None,
  *,
  warmup: int = 2,
  repeats: int = 5,
) -> DataParallelTiming:
  """Times `forward(model, batch)` on one device and over `mesh`'s "data".

  Both run the same jitted program on the same global batch: once with the
  weights and the whole batch on the mesh's first device, once with the
  weights replicated and the batch split over the "data" axis (GSPMD
  partitions the program; each device computes B / n examples). The two
  are timed interleaved (`jaxexit.timing.time_side_by_side`), after
  untimed warm-up calls that absorb compiling.

  Args:
    forward: `(model, batch) -> outputs`, pure apart from the model.
    model: the NNX module (split into graphdef and state, merged inside
      the jitted program).
    batch: a pytree of arrays [B, ...] with one common B, divisible by the
      mesh's device count.
    mesh: a mesh with a "data" axis (`data_parallel_mesh()`); None or one
      device times only the one-device row.
    warmup: untimed rounds, >= 0.
    repeats: timed rounds, >= 1.

  Returns:
    A `DataParallelTiming`; `.markdown()` renders it.
  """
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, batch):
    return forward(nnx.merge(graphdef, state), batch)

  devices = 1 if mesh is None else mesh.shape[DATA]
  first = jax.devices()[0] if mesh is None else mesh.devices.flat[0]
  one = (jax.device_put(state, first), jax.device_put(batch, first))
  candidates = {"one": (run, one)}
  if devices > 1:
    candidates["mesh"] = (
      run,
      (replicate(state, mesh), shard_batch(batch, mesh)),
    )
  timings = timing.time_side_by_side(candidates, warmup=warmup, repeats=repeats)
  diff = 0.0
  if devices > 1:
    pairs = zip(
      jax.tree.leaves(run(*one)), jax.tree.leaves(run(*candidates["mesh"][1]))
    )
    diff = max(
      (
        float(
          np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))
        )
        for a, b in pairs
        if jnp.issubdtype(a.dtype, jnp.floating)
      ),
      default=0.0,
    )
  return DataParallelTiming(
    batch=int(np.shape(jax.tree.leaves(batch)[0])[0]),
    devices=devices,
    device_kind=first.device_kind,
    one_device=timings["one"],
    mesh=timings.get("mesh"),
    max_abs_diff=diff,
  )
