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
(see `jaxexit.sharding.families`).

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
from jaxexit.sharding.families import FAMILY_AXES, LOGICAL_AXES
from jaxexit.sharding.logical import logical_axes
from jaxexit.sharding.mesh import MESH_AXES, make_mesh, parse_mesh_axes
from jaxexit.sharding.rules import DEFAULT_RULES, logical_spec
from jaxexit.sharding.state import shard_state, state_shardings

__all__ = [
  "DATA",
  "DEFAULT_RULES",
  "DataParallelTiming",
  "FAMILY_AXES",
  "LOGICAL_AXES",
  "MESH_AXES",
  "constrain",
  "data_parallel_mesh",
  "logical_axes",
  "logical_spec",
  "make_mesh",
  "parse_mesh_axes",
  "replicate",
  "shard_batch",
  "shard_state",
  "state_shardings",
  "time_data_parallel",
]
