"""Realised speed-up of an exit rule over a dataset, measured side by side.

The full model and the exit mode process the same batches, interleaved
round-robin (`timing.time_side_by_side`), and the ratio of median times is
the realised speed-up, to set beside the theoretical `L / avg_layers`.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxexit import cost, timing
from jaxexit.execution.full import make_full_model
from jaxexit.execution.modes import make_runner
from jaxexit.execution.stack import ExitStack
from jaxexit.exits.rules import ExitRule
from jaxexit.typing import PyTree


@dataclasses.dataclass(frozen=True)
class SpeedReport:
  """Measured against the full model on the same batches.

  Attributes:
    mode: the execution mode timed.
    batch_size: examples per call.
    avg_layers: mean layers used per example, over all batches.
    theoretical_speedup: L / avg_layers.
    realised_speedup: full-model seconds / mode seconds (medians).
    full_seconds: median seconds for all batches with the full model.
    mode_seconds: the same for the mode.
  """

  mode: str
  batch_size: int
  avg_layers: float
  theoretical_speedup: float
  realised_speedup: float
  full_seconds: float
  mode_seconds: float

  @property
  def ratio(self) -> float:
    """realised / theoretical (1.0 = the savings are fully real)."""
    return self.realised_speedup / self.theoretical_speedup


def measure_speedup(
  stack: ExitStack,
  rule: ExitRule,
  params: PyTree,
  batches: Sequence[PyTree],
  *,
  mode: str,
  rule_inputs: Sequence[PyTree] | None = None,
  warmup: int = 1,
  repeats: int = 5,
  **mode_options,
) -> SpeedReport:
  """Times `mode` against the full model over `batches` (same batch size).

  Args:
    stack: the model's layers and exit heads.
    rule: the exit rule.
    params: parameters for `stack`.
    batches: carries, each with leaves `[B, ...]`; one "call" processes all.
    mode: "early_stop" or "compacted" (or "simulate", for reference).
    rule_inputs: per-batch `rule_inputs`, or None.
    warmup: untimed rounds (absorb compiling).
    repeats: timed rounds.
    **mode_options: forwarded to `make_runner`.
  """
  if not batches:
    raise ValueError("batches must hold at least one batch; got 0")
  inputs = (
    list(rule_inputs) if rule_inputs is not None else [None] * len(batches)
  )
  if len(inputs) != len(batches):
    raise ValueError(
      f"rule_inputs has {len(inputs)} entries for {len(batches)} batches"
    )
  full = make_full_model(stack)
  runner = make_runner(mode, stack, rule, **mode_options)
  exit_layers = [
    runner(params, b, rule_inputs=r).exit_layer for b, r in zip(batches, inputs)
  ]
  run_full = lambda: [full(params, b) for b in batches]
  run_mode = lambda: [
    runner(params, b, rule_inputs=r).exit_layer for b, r in zip(batches, inputs)
  ]
  times = timing.time_side_by_side(
    {"full": (run_full, ()), "mode": (run_mode, ())},
    warmup=warmup,
    repeats=repeats,
  )
  exit_layer = np.concatenate([np.asarray(e) for e in exit_layers])
  theoretical = cost.theoretical_speedup(exit_layer, stack.num_layers)
  realised = cost.realised_speedup(times["full"], times["mode"])
  batch_size = int(np.asarray(exit_layers[0]).shape[0])
  return SpeedReport(
    mode=mode,
    batch_size=batch_size,
    avg_layers=cost.avg_layers(exit_layer),
    theoretical_speedup=theoretical,
    realised_speedup=realised,
    full_seconds=times["full"].median,
    mode_seconds=times["mode"].median,
  )
