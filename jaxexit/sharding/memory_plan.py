"""Per-device memory of a training workload on a mesh, from abstract shapes.

A `Workload` is what one run keeps: the abstract train state of what it
trains (`nnx.eval_shape` of the model and its optimizer: nothing is
allocated), the abstract state of a frozen part, and per phase (a train
step, a feature pass) its global batch, the `Stack`s whose activations it
keeps and which part fsdp all-gathers block by block
(`jaxexit.sharding.workloads` builds them from model configs).
`plan_memory` shards the abstract states with `state_shardings` on the
mesh (an `AbstractMesh`, `abstract_mesh`, plans for devices this host
does not have) and adds, per device:

  total = params + grads + optimizer + activations + gathered

  params       trained and frozen parameters (their shard shapes)
  grads        the trained parameters' bytes (sharded like them)
  optimizer    the optimizer state's shards (moments follow parameters)
  activations  of the phase that needs most: rows per device (batch /
               (data * fsdp)) x (`Stack.saved` + the phase's per-row
               cache), see `jaxexit.sharding.activations`
  gathered     fsdp > 1: one block's weights all-gathered plus its full
               gradient before the reduce-scatter, 2 x block / tensor (a
               forward-only phase over the frozen part: 1 x block / tensor)

A run fits when total <= the device's memory. Nothing is left for XLA's
own buffers or fragmentation, so a plan that fits barely may still not.
`require_fit` raises `MemoryPlanError` naming the shortfall.
"""

import collections
import dataclasses
import math
import os
import re
from collections.abc import Mapping, Sequence

import jax
from jax.sharding import AbstractMesh, AxisType, Mesh

from jaxexit.sharding.activations import Rate, Stack, no_bytes
from jaxexit.sharding.logical import Family, path_str
from jaxexit.sharding.logical import logical_axes
from jaxexit.sharding.mesh import MESH_AXES, mesh_shape
from jaxexit.sharding.state import state_shardings
from jaxexit.typing import PyTree

GiB = 2**30


class MemoryPlanError(ValueError):
  """The mesh cannot hold the workload (the message names the shortfall)."""


@dataclasses.dataclass(frozen=True)
class Phase:
  """One phase of a run (a train step, a forward feature pass).

  Attributes:
    batch: global rows per step, split over (data, fsdp).
    stacks: the block stacks whose activations the phase keeps.
    gather: which part fsdp all-gathers per block, "trained" (weights and
      gradient) or "frozen" (weights only).
    cache_row: bytes per row besides the stacks' (e.g. a decode cache).
  """

  batch: int
  stacks: tuple[Stack, ...]
  gather: str = "trained"
  cache_row: Rate = no_bytes

  def __post_init__(self):
    if self.gather not in ("trained", "frozen"):
      raise ValueError(
        f"Phase.gather={self.gather!r}; expected 'trained' or 'frozen'"
      )


@dataclasses.dataclass(frozen=True)
class Workload:
  """What a run holds on its devices.

  Attributes:
    name: what the plan is of (e.g. "hidrop paper: LLaVA-1.5-7B").
    trained: abstract train state `{0: parameters, 1: optimizer state}`
      (`jaxexit.sharding.workloads.abstract_train_state`).
    family: the sharding family of `trained`.
    phases: {name: Phase}; the plan takes the one that needs most.
    seq_len: tokens per row (reported).
    dtype: the compute dtype's name (reported).
    trainable: what is trained (reported).
    frozen: abstract parameters of a frozen part, or None.
    frozen_family: its sharding family.
  """

  name: str
  trained: PyTree
  family: Family
  phases: Mapping[str, Phase]
  seq_len: int
  dtype: str
  trainable: str = "every parameter"
  frozen: PyTree | None = None
  frozen_family: Family | None = None


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
  """Bytes per device of a workload on a mesh (module doc).

  Attributes:
    workload, trainable, dtype, seq_len: from the `Workload`.
    mesh: {axis: size}.
    device_bytes: memory of one device.
    remat: activations with remat per block.
    batch: {phase: global batch}.
    params, grads, optimizer: bytes per device.
    phase: the phase that needs most.
    activations, gathered: its bytes per device.
  """

  workload: str
  trainable: str
  dtype: str
  seq_len: int
  mesh: dict[str, int]
  device_bytes: int
  remat: bool
  batch: dict[str, int]
  params: int
  grads: int
  optimizer: int
  phase: str
  activations: int
  gathered: int

  @property
  def devices(self) -> int:
    return math.prod(self.mesh.values())

  @property
  def total(self) -> int:
    return (
      self.params + self.grads + self.optimizer + self.activations
      + self.gathered
    )  # fmt: skip

  @property
  def fits(self) -> bool:
    return self.total <= self.device_bytes

  @property
  def shortfall(self) -> int:
    """Bytes per device missing (0 when it fits)."""
    return max(self.total - self.device_bytes, 0)

  @property
  def mesh_text(self) -> str:
    return ",".join(f"{a}={n}" for a, n in self.mesh.items())

  def describe(self) -> str:
    """The plan as a few printable lines."""
    verdict = (
      "fits"
      if self.fits
      else f"does NOT fit (short by {_gib(self.shortfall)} GiB)"
    )
    batches = ", ".join(f"{k} {v}" for k, v in self.batch.items())
    return (
      f"memory plan per device: {self.workload} on mesh {self.mesh_text} "
      f"({self.devices} x {_gib(self.device_bytes)} GiB); {self.dtype}, "
      f"{self.seq_len} tokens per row, batch {batches}, "
      f"{'remat per block' if self.remat else 'no remat'}\n"
      f"  trains {self.trainable}\n"
      f"  params {_gib(self.params)} GiB, grads {_gib(self.grads)} GiB, "
      f"optimizer {_gib(self.optimizer)} GiB\n"
      f"  activations ({self.phase}) {_gib(self.activations)} GiB, "
      f"fsdp-gathered block {_gib(self.gathered)} GiB\n"
      f"  total {_gib(self.total)} GiB of {_gib(self.device_bytes)} GiB: "
      f"{verdict}"
    )


def _gib(n: int) -> str:
  return f"{n / GiB:,.2f}"


def abstract_mesh(
  axes: Mapping[str, int] | str | None, num_devices: int
) -> AbstractMesh:
  """A device-free mesh of `num_devices` over ("data", "fsdp", "tensor").

  Args:
    axes: as `make_mesh` (None: every device on "data").
    num_devices: devices of the mesh (this host need not have them).
  """
  shape = mesh_shape({"data": -1} if axes is None else axes, num_devices)
  return AbstractMesh(
    tuple(shape.values()),
    MESH_AXES,
    axis_types=(AxisType.Auto,) * len(MESH_AXES),
  )


def device_memory_bytes(devices: Sequence[jax.Device] | None = None) -> int:
  """Memory of the smallest of `devices` (default: the local ones).

  An accelerator reports its `bytes_limit`; CPU devices, which report
  nothing, share the host's physical memory equally.
  """
  devices = list(jax.local_devices() if devices is None else devices)
  limits = [(d.memory_stats() or {}).get("bytes_limit") for d in devices]
  if all(limits):
    return min(limits)
  host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return host // len(devices)


def planned_bytes(tree: PyTree, mesh: Mesh | AbstractMesh, family) -> int:
  """Per-device bytes of an abstract tree from its shard shapes (every
  device holds an equal shard: `logical_spec` shards only what divides)."""
  shardings = state_shardings(tree, mesh, family=family)
  return sum(
    math.prod(s.shard_shape(leaf.shape)) * leaf.dtype.itemsize
    for leaf, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings))
  )


def largest_block(tree: PyTree, family: Family) -> int:
  """Global bytes of the largest block (`layers/i`, `blocks/i` or one
  slice of a stacked `layers` axis) of an abstract tree."""
  axes = logical_axes(tree, family)
  blocks = collections.Counter()
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    name, size = path_str(path), leaf.size * leaf.dtype.itemsize
    if m := re.match(r"(.*?(?:layers|blocks))/(\d+)/", name):
      blocks[m[1], m[2]] += size
    elif axes.get(name, (None,))[0] == "layers":
      blocks[name.split("/layers/")[0], "stacked"] += size / leaf.shape[0]
  return int(max(blocks.values(), default=0))


def plan_memory(
  workload: Workload,
  mesh: Mesh | AbstractMesh,
  device_bytes: int,
  *,
  remat: bool = False,
) -> MemoryPlan:
  """Per-device bytes of `workload` on `mesh` (formulas: module doc).

  Args:
    workload: what the run holds.
    mesh: a mesh with axes ("data", "fsdp", "tensor") (`make_mesh` or
      `abstract_mesh`).
    device_bytes: memory of one device (`device_memory_bytes`).
    remat: activations with remat per block.

  Raises:
    ValueError: a phase's batch that does not split over data x fsdp.
  """
  shape = dict(mesh.shape)
  rows, tensor = shape["data"] * shape["fsdp"], shape["tensor"]
  params_tree, opt_tree = workload.trained[0], workload.trained[1]
  grads = planned_bytes(params_tree, mesh, workload.family)
  opt = planned_bytes(opt_tree, mesh, workload.family)
  params = grads
  blocks = {"trained": 2 * largest_block(params_tree, workload.family)}
  if workload.frozen is not None:
    params += planned_bytes(workload.frozen, mesh, workload.frozen_family)
    blocks["frozen"] = largest_block(workload.frozen, workload.frozen_family)
  need = {}
  for name, phase in workload.phases.items():
    if phase.batch % rows:
      raise ValueError(
        f"{workload.name}: the {name} batch of {phase.batch} does not "
        f"split over data x fsdp = {rows} devices of mesh {shape}"
      )
    per_row = phase.cache_row(tensor) + sum(
      stack.saved(tensor, remat) for stack in phase.stacks
    )
    acts = phase.batch // rows * per_row
    gathered = blocks[phase.gather] / tensor if shape["fsdp"] > 1 else 0
    need[name] = (int(acts), int(gathered))
  phase, (acts, gathered) = max(need.items(), key=lambda kv: sum(kv[1]))
  return MemoryPlan(
    workload=workload.name,
    trainable=workload.trainable,
    dtype=workload.dtype,
    seq_len=workload.seq_len,
    mesh=shape,
    device_bytes=int(device_bytes),
    remat=remat,
    batch={k: p.batch for k, p in workload.phases.items()},
    params=int(params),
    grads=int(grads),
    optimizer=int(opt),
    phase=phase,
    activations=acts,
    gathered=gathered,
  )


def require_fit(plan: MemoryPlan, remat_plan: MemoryPlan | None = None):
  """Raises `MemoryPlanError` when `plan` does not fit.

  Args:
    plan: the plan of the run as configured.
    remat_plan: the same with remat per block, named in the message when
      it would fit (the run does not switch to it by itself).
  """
  if plan.fits:
    return
  hint = ""
  if remat_plan is not None and remat_plan.fits and not plan.remat:
    hint = (
      f" With remat per block it would need {_gib(remat_plan.total)} GiB "
      "and fit, but this run does not rematerialise."
    )
  raise MemoryPlanError(
    f"{plan.workload} needs {_gib(plan.total)} GiB per device on mesh "
    f"{plan.mesh_text} but a device holds {_gib(plan.device_bytes)} GiB: "
    f"short by {_gib(plan.shortfall)} GiB per device (params "
    f"{_gib(plan.params)}, grads {_gib(plan.grads)}, optimizer "
    f"{_gib(plan.optimizer)}, {plan.phase} activations "
    f"{_gib(plan.activations)}, gathered {_gib(plan.gathered)} GiB).{hint} "
    "Use more devices, shard the parameters (--mesh fsdp=N or tensor=N), "
    "or lower the batch."
  )
