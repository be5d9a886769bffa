"""Data-parallel sharding: a 1-D "data" mesh, batch sharding, replication.

Kept deliberately small (one H200 in production, 8 fake CPU devices in
tests). `ShardingConfig` names a `PartitionSpec` per activation/weight shape;
`None` means "let the compiler decide" (replicated weights, propagated
activations). Models call `constrain(x, cfg.act_btd)` at the few points
where a layout matters; the calls are no-ops under the default config.

Axis letters of field names follow `jaxexit.typing`: B batch, T tokens,
D width, F MLP width, V vocabulary, L exits. Usage::

  mesh = data_parallel_mesh()
  with jax.set_mesh(mesh):
    state = replicate(state, mesh)
    state, metrics = step(graphdef, state, shard_batch(batch, mesh), rng)

The mesh axis is `AxisType.Auto`: sharding propagates through GSPMD, so
model code written without sharding annotations still compiles (`Explicit`
axes, `jax.make_mesh`'s default on JAX 0.10, would reject some reshapes and
gathers of a sharded batch).
"""

import dataclasses

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxexit import checks
from jaxexit.typing import Array, PyTree

DATA = "data"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShardingConfig:
  """One `PartitionSpec | None` per named shape; None = replicated/auto.

  Attributes:
    batch_b: leading axis of every input batch leaf.
    act_bd: pooled activations [B, D].
    act_btd: token activations [B, T, D].
    act_btf: MLP hidden activations [B, T, F].
    logits_btv: token logits [B, T, V].
    logits_blc: per-exit class logits [B, L, C].
    w_df: MLP input weight [D, F].
    w_fd: MLP output weight [F, D].
    w_vd: embedding table [V, D].
  """

  batch_b: P | None = None
  act_bd: P | None = None
  act_btd: P | None = None
  act_btf: P | None = None
  logits_btv: P | None = None
  logits_blc: P | None = None
  w_df: P | None = None
  w_fd: P | None = None
  w_vd: P | None = None

  @classmethod
  def data_parallel(cls, axis: str = DATA) -> "ShardingConfig":
    """Batch-leading activations sharded over `axis`, weights replicated."""
    b = P(axis)
    return cls(batch_b=b, act_bd=b, act_btd=b, act_btf=b, logits_btv=b,
               logits_blc=b)


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
        f"num_devices={n} exceeds the {available} available device(s)")
  return jax.make_mesh((n,), (DATA,), axis_types=(AxisType.Auto,),
                       devices=jax.devices()[:n])


def shard_batch(batch: PyTree, mesh: Mesh, axis: str = DATA) -> PyTree:
  """Places every leaf of `batch` split along its leading axis over `axis`.

  Args:
    batch: a pytree of arrays, each [B, ...] with one common B.
    mesh: the mesh.
    axis: the mesh axis to split B over.

  Returns:
    The batch as `jax.Array`s with `NamedSharding(mesh, P(axis))`.
  """
  n = mesh.shape[axis]
  sharding = NamedSharding(mesh, P(axis))

  def put(x):
    size = np.shape(x)[0] if np.ndim(x) else None
    if size is None or size % n:
      raise ValueError(
          f"batch size {size} (leaf shape {np.shape(x)}) must be divisible "
          f"by the device count {n} of mesh axis {axis!r}")
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
