"""Each process loads its own rows; together they make one global batch.

With several processes (`jaxexit.sharding.init_distributed`), a global
batch of B rows is split into `jax.process_count()` contiguous blocks of
b = B / process_count rows, and process i loads block i only:
`process_batch_indices` gives its dataset indices (a pure function of the
step, so a resumed run sees the same rows) and `global_batch` turns the
loaded numpy rows into global `jax.Array`s
(`jax.make_array_from_process_local_data`), sharded on B over the batch
mesh axes. Process i's devices must hold block i of the batch, as they do
on a mesh from `make_mesh` whose batch axes ("data", "fsdp") come first:
`jax.devices()` is ordered by process. Usage::

  indices = process_batch_indices(step, len(tokens), batch_size, seed)
  batch = global_batch({"tokens": tokens[indices]}, mesh)  # [B, T] global

Axes: `B` global batch, `b` this process's rows of it.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxtyping import Int64

from jaxexit import checks
from jaxexit.data.batching import shuffled_batch_indices
from jaxexit.sharding.data_parallel import batch_device_count
from jaxexit.sharding.rules import DEFAULT_RULES
from jaxexit.typing import PyTree


def process_batch_indices(
  step: int,
  num_examples: int,
  batch_size: int,
  seed: int,
  *,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Int64[np.ndarray, "b"]:
  """This process's block of the training batch at `step`.

  Block `process_index` of `shuffled_batch_indices(step, num_examples,
  batch_size, seed)`, cut into `process_count` equal blocks: the blocks of
  all processes, in order, are the one-process batch.

  Args:
    step: global step, >= 0.
    num_examples: size of the dataset.
    batch_size: the global batch size B, divisible by `process_count`.
    seed: non-negative seed; with `step` it fixes the batch.
    process_index: the block (default: `jax.process_index()`).
    process_count: the blocks (default: `jax.process_count()`).

  Returns:
    [batch_size // process_count] int64 dataset indices.

  Raises:
    ValueError: `batch_size` not divisible by `process_count`, an index
      outside [0, process_count), or a bad argument of
      `shuffled_batch_indices`.
  """
  count = jax.process_count() if process_count is None else process_count
  index = jax.process_index() if process_index is None else process_index
  checks.positive_int("process_count", count)
  if not 0 <= index < count:
    raise ValueError(f"process_index={index} must be in [0, {count})")
  if batch_size % count:
    raise ValueError(
      f"batch_size={batch_size} is not divisible by the {count} processes"
    )
  indices = shuffled_batch_indices(step, num_examples, batch_size, seed)
  rows = batch_size // count
  return indices[index * rows : (index + 1) * rows]  # [b]


def _check_process_rows(sharding: NamedSharding, size: int, rows: int):
  """Raises unless this process's devices hold block `process_index()`."""
  index = jax.process_index()
  held = sorted(
    {
      i
      for (s,) in sharding.addressable_devices_indices_map((size,)).values()
      for i in range(*s.indices(size))
    }
  )
  if held != list(range(index * rows, (index + 1) * rows)):
    raise ValueError(
      f"process {index}'s devices hold rows {held[0]}..{held[-1]} "
      f"({len(held)} rows) of the global batch of {size} under "
      f"{sharding.spec}, not its block {index} of {rows} rows; the batch "
      f"mesh axes must split the batch over the processes in order "
      f"(a make_mesh mesh whose leading axes carry the batch)"
    )


def global_batch(
  local_batch: PyTree,
  mesh: Mesh,
  axes: str | tuple[str, ...] = DEFAULT_RULES["batch"],
) -> PyTree:
  """Global arrays from every process's block of rows of a batch.

  Every process calls it (a collective in effect) with its own block,
  e.g. the rows `process_batch_indices` picks. On one process it places
  the batch like `shard_batch`.

  Args:
    local_batch: a pytree of numpy arrays [b, ...] with one common b, the
      rows of this process.
    mesh: a mesh over the devices of every process.
    axes: the mesh axis (or tuple of axes) that split the batch; default
      the rules' "batch", ("data", "fsdp").

  Returns:
    The batch as `jax.Array`s [B, ...], B = b * `jax.process_count()`,
    with `NamedSharding(mesh, P(axes))`; each process holds only the
    shards of its own rows.

  Raises:
    ValueError: an unknown mesh axis, leaves with different b, a B that
      the axes' devices do not divide, or a mesh whose devices do not hold
      each process's block (naming the rows they hold).
  """
  devices = batch_device_count(mesh, axes)
  sizes = {
    np.shape(x)[0] if np.ndim(x) else None for x in jax.tree.leaves(local_batch)
  }
  if len(sizes) != 1 or None in sizes:
    raise ValueError(
      f"every leaf of the local batch needs one common leading size b; "
      f"got {jax.tree.map(np.shape, local_batch)}"
    )
  (rows,) = sizes
  size = rows * jax.process_count()
  if size % devices:
    raise ValueError(
      f"global batch {size} ({rows} rows x {jax.process_count()} "
      f"processes) is not divisible by the {devices} devices of mesh axes "
      f"{axes!r}"
    )
  sharding = NamedSharding(mesh, P(axes))
  _check_process_rows(sharding, size, rows)
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(
      sharding, x, (size, *np.shape(x)[1:])
    ),
    local_batch,
  )
