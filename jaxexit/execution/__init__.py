"""Execution modes for any stack of layers with exit heads, on one device
or on a batch sharded over a mesh (`make_sharded_runner`)."""

from jaxexit.execution.adapter import (
  PerLayer,
  branches,
  exit_stack,
  indexed,
  layer_list,
  layer_module,
  shared,
  stacked,
)
from jaxexit.execution.compacted import CompactedRunner, bucket_sizes
from jaxexit.execution.early_stop import early_stop
from jaxexit.execution.flops import ExitFlops, exit_flops, xla_flops
from jaxexit.execution.full import make_full_model
from jaxexit.execution.modes import MODES, compacted, make_runner, run
from jaxexit.execution.sharded import (
  ShardedCompactedRunner,
  make_sharded_runner,
  sharded_early_stop,
)
from jaxexit.execution.simulate import simulate
from jaxexit.execution.speed import SpeedReport, measure_speedup
from jaxexit.execution.stack import ExitResult, ExitStack

__all__ = [
  "MODES",
  "CompactedRunner",
  "ExitFlops",
  "ExitResult",
  "ExitStack",
  "PerLayer",
  "ShardedCompactedRunner",
  "SpeedReport",
  "branches",
  "bucket_sizes",
  "compacted",
  "early_stop",
  "exit_flops",
  "exit_stack",
  "indexed",
  "layer_list",
  "layer_module",
  "make_full_model",
  "make_runner",
  "make_sharded_runner",
  "measure_speedup",
  "run",
  "shared",
  "sharded_early_stop",
  "simulate",
  "stacked",
  "xla_flops",
]
