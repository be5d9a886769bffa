"""Sharding over many devices with GSPMD: a mesh, logical axes, rules.

As in maxtext, levanter and the Flax NNX GSPMD guide: a mesh with axes
"data", "fsdp" and "tensor" (`make_mesh`); logical axis names on every
parameter of every model family, written as one table of path patterns
per family (`FAMILY_AXES`) rather than in the model files; one table of
rules mapping logical axes to mesh axes (`DEFAULT_RULES`); and
`state_shardings` / `shard_state`, which turn both into `NamedSharding`s
for a model, its optimizer state, or the two together. `jax.jit` then
partitions the step from the shardings of its inputs.

Logical axes: batch [B], layers [L], embed [D], heads [H], kv_heads,
head_dim [K], mlp [F], vocab [V], conv_in, conv_out, spatial, state [S]
(see `jaxexit.sharding.families`); `infer_family` finds a model's table.

Multi-host: `init_distributed` joins a cluster of processes (arguments,
`JAXEXIT_COORDINATOR` / `JAXEXIT_NUM_PROCESSES` / `JAXEXIT_PROCESS_ID`,
or JAX's detection with `auto=True`; nothing on one process); each
process loads its block of every batch (`process_batch_indices`) and
`global_batch` joins the blocks into global arrays; `is_main_process`
says who writes files.

Memory plans: `plan_memory` adds up a `Workload`'s parameters, gradients,
optimizer state and activations per device on a mesh from abstract shapes
(an `abstract_mesh` plans for devices this host lacks), and `require_fit`
refuses, naming the shortfall (`jaxexit.sharding.workloads` builds
workloads from model configs).

The data-parallel helpers (`data_parallel_mesh`, `shard_batch`,
`replicate`, `time_data_parallel`) come first in time and still serve the
notebooks' timing cells.
"""

from jaxexit.sharding.data_parallel import (
  DATA,
  DataParallelTiming,
  constrain,
  data_parallel_mesh,
  replicate,
  shard_batch,
  time_data_parallel,
)
from jaxexit.sharding.distributed import (
  Cluster,
  init_distributed,
  is_main_process,
)
from jaxexit.sharding.families import FAMILY_AXES, LOGICAL_AXES
from jaxexit.sharding.logical import infer_family, logical_axes
from jaxexit.sharding.memory_plan import (
  MemoryPlan,
  MemoryPlanError,
  Phase,
  Workload,
  abstract_mesh,
  device_memory_bytes,
  plan_memory,
  require_fit,
)
from jaxexit.sharding.mesh import MESH_AXES, make_mesh, parse_mesh_axes
from jaxexit.sharding.process_data import global_batch, process_batch_indices
from jaxexit.sharding.rules import DEFAULT_RULES, default_rules, logical_spec
from jaxexit.sharding.state import shard_state, state_shardings

__all__ = [
  "Cluster",
  "DATA",
  "DEFAULT_RULES",
  "DataParallelTiming",
  "FAMILY_AXES",
  "LOGICAL_AXES",
  "MESH_AXES",
  "MemoryPlan",
  "MemoryPlanError",
  "Phase",
  "Workload",
  "abstract_mesh",
  "constrain",
  "data_parallel_mesh",
  "device_memory_bytes",
  "default_rules",
  "global_batch",
  "infer_family",
  "init_distributed",
  "is_main_process",
  "logical_axes",
  "logical_spec",
  "make_mesh",
  "parse_mesh_axes",
  "plan_memory",
  "process_batch_indices",
  "replicate",
  "require_fit",
  "shard_batch",
  "shard_state",
  "state_shardings",
  "time_data_parallel",
]
