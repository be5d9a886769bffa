"""The memory check the 7B paper presets run before they load anything.

`check_memory` prints the per-device memory plan of the run
(`jaxexit.sharding.memory_plan`: params, grads, optimizer, activations at
the run's batch, remat and dtype, from abstract shapes) on the run's mesh
and raises `MemoryPlanError`, naming the shortfall, when a device cannot
hold it. The mesh is `--mesh` (`experiments.cli.add_device_flags`) when
the experiment has the flag, else every device on "data".
"""

import argparse
from collections.abc import Callable, Sequence

import jax
from jax.sharding import Mesh

from jaxexit import sharding
from jaxexit.sharding.memory_plan import (
  MemoryPlan,
  Workload,
  device_memory_bytes,
  plan_memory,
  require_fit,
)


def run_mesh(args: argparse.Namespace) -> Mesh:
  """The mesh of `--mesh` (an `{axis: size}`), or every device on data."""
  return sharding.make_mesh(getattr(args, "mesh", None))


def check_memory(
  workloads: Sequence[Workload],
  mesh: Mesh,
  *,
  log: Callable[[str], None] = print,
  device_bytes: int | None = None,
) -> MemoryPlan:
  """Prints the plan of the workload that needs most; refuses a misfit.

  Args:
    workloads: what the run may hold (e.g. one per classifier kind it
      trains in turn); the one with the largest total is planned.
    mesh: the run's mesh.
    log: where the plan is printed.
    device_bytes: memory of one device (default: `device_memory_bytes` of
      this process's devices).

  Returns:
    The plan printed (it fits).

  Raises:
    MemoryPlanError: the plan does not fit (the message names the
      shortfall and whether remat per block would fit).
  """
  if device_bytes is None:
    device_bytes = device_memory_bytes(jax.local_devices())
  plans = [plan_memory(w, mesh, device_bytes) for w in workloads]
  plan = max(plans, key=lambda p: p.total)
  log(plan.describe())
  workload = workloads[plans.index(plan)]
  require_fit(plan, plan_memory(workload, mesh, device_bytes, remat=True))
  return plan
