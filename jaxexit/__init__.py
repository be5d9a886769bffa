"""jaxexit: dynamic compute for JAX (early exits, halting, pruning).

  import jaxexit as jx

  stack, params = jx.exit_stack(model.layers, model.heads)  # any NNX model
  rule = jx.max_softmax_rule(0.9)                    # when an example exits
  runner = jx.make_runner("compacted", stack, rule)  # how the stack runs
  result = runner(params, batch)                     # jx.ExitResult

The flat namespace holds the core names (the exit contract, the execution
modes, the rule constructors, decoding); the subpackages (`jx.exits`,
`jx.execution`, `jx.decoding`, `jx.models`, `jx.train`, ...) load on first
use, so `import jaxexit` imports JAX and this core only: no model weights,
no torch, no checkpointing stack.
"""

import importlib
import importlib.metadata

from jaxexit.checks import checked, debug_checks
from jaxexit.decoding import DecodeConfig, generate, generate_full
from jaxexit.execution import (
  ExitResult,
  ExitStack,
  compacted,
  early_stop,
  exit_stack,
  make_runner,
  simulate,
)
from jaxexit.exits import (
  ExitHeadOutput,
  ExitRule,
  always,
  entropy_rule,
  fixed_depth,
  jei_gate_rule,
  learned_exit_rule,
  max_softmax_rule,
  memoryless,
  never,
  patience_rule,
  preset_depth,
  q_exit_rule,
  sampled_exit_rule,
  thresholds_input_rule,
  thresholds_rule,
)

try:
  __version__ = importlib.metadata.version("jaxexit")
except importlib.metadata.PackageNotFoundError:  # a source tree, not installed
  __version__ = "0+unknown"

_SUBPACKAGES = (
  "answers",
  "calibration",
  "checks",
  "conformal",
  "cost",
  "data",
  "decoding",
  "execution",
  "exits",
  "exploratory_iteration",
  "glue_metrics",
  "methods",
  "models",
  "nn",
  "pruning",
  "report",
  "results_store",
  "rl",
  "serve",
  "sharding",
  "stats",
  "text_metrics",
  "timing",
  "train",
)


def __getattr__(name: str):
  """Imports a subpackage on first access (`jx.models`, `jx.train`, ...)."""
  if name in _SUBPACKAGES:
    return importlib.import_module(f"jaxexit.{name}")
  raise AttributeError(f"module 'jaxexit' has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | set(_SUBPACKAGES))


__all__ = [
  # The exit contract.
  "ExitHeadOutput",
  "ExitResult",
  "ExitRule",
  "ExitStack",
  # Any NNX model's layers and heads as an ExitStack.
  "exit_stack",
  # Execution modes.
  "compacted",
  "early_stop",
  "make_runner",
  "simulate",
  # Rule constructors.
  "always",
  "entropy_rule",
  "fixed_depth",
  "jei_gate_rule",
  "learned_exit_rule",
  "max_softmax_rule",
  "memoryless",
  "never",
  "patience_rule",
  "preset_depth",
  "q_exit_rule",
  "sampled_exit_rule",
  "thresholds_input_rule",
  "thresholds_rule",
  # Decoding.
  "DecodeConfig",
  "generate",
  "generate_full",
  # Validation.
  "checked",
  "debug_checks",
  "__version__",
]
