"""One entry point for the three execution modes.

  simulate    all layers, exits by masks (training; paper metrics)
  early_stop  `lax.while_loop` that stops when the whole batch has exited
  compacted   exited examples leave the batch between segments

All three return the same `ExitResult.exit_layer` and exit outputs for the
same stack, rule and inputs (tested), so a method is evaluated in
`simulate` and timed in the mode that really skips work.

An empty batch (B = 0) is refused by all three, by the full-model baseline
(`make_full_model`) and by `exit_flops`, with the same ValueError
("batch is empty (B = 0) ...", from `stack.batch_size_of`), eagerly or
while tracing under `jit` (B is static). Exit statistics of no examples
are undefined, and refusing keeps the modes in agreement (`compacted`
cannot build a bucket of size 0); the decoding entry points refuse an
empty batch of prompts the same way.
"""

import functools
from collections.abc import Callable

import jax

from jaxexit import checks
from jaxexit.execution.compacted import CompactedRunner
from jaxexit.execution.early_stop import early_stop
from jaxexit.execution.simulate import simulate
from jaxexit.execution.stack import ExitResult, ExitStack
from jaxexit.exits.rules import ExitRule
from jaxexit.typing import PyTree

MODES = ("simulate", "early_stop", "compacted")


def make_runner(
  mode: str, stack: ExitStack, rule: ExitRule, **options
) -> Callable[..., ExitResult]:
  """A compiled `runner(params, carry, *, rule_inputs=None) -> ExitResult`.

  Runners are cached per (mode, stack, rule, options), compared by value:
  a stack from `exit_stack` compares equal to one built again from the same
  model (its functions hold graph definitions, not closures), so asking
  again reuses the compiled programs. A rule compares by identity: build
  it once and keep it. The cache holds the 128 most recent runners.

  Args:
    mode: one of `MODES`.
    stack: the model's layers and exit heads.
    rule: the exit rule.
    **options: mode options (`unroll` for simulate; `segment_layers`,
      `buckets` for compacted).
  """
  checks.one_of("mode", mode, MODES)
  return _cached_runner(mode, stack, rule, tuple(sorted(options.items())))


@functools.lru_cache(maxsize=128)
def _cached_runner(mode, stack, rule, options):
  options = dict(options)
  if mode == "compacted":
    return CompactedRunner(stack, rule, **options)
  fn = simulate if mode == "simulate" else early_stop
  jitted = jax.jit(functools.partial(fn, stack, rule, **options))
  return lambda params, carry, *, rule_inputs=None: jitted(
    params, carry, rule_inputs=rule_inputs
  )


def compacted(
  stack: ExitStack,
  rule: ExitRule,
  params: PyTree,
  carry: PyTree,
  *,
  rule_inputs: PyTree = None,
  **options,
) -> ExitResult:
  """Runs `stack` with exited examples removed between segments.

  The compiled programs are cached per (stack, rule, options) through
  `make_runner`; `options` are `CompactedRunner`'s (`segment_layers`,
  `buckets`).
  """
  runner = make_runner("compacted", stack, rule, **options)
  return runner(params, carry, rule_inputs=rule_inputs)


def run(
  mode: str,
  stack: ExitStack,
  rule: ExitRule,
  params: PyTree,
  carry: PyTree,
  *,
  rule_inputs: PyTree = None,
  **options,
) -> ExitResult:
  """Runs one batch in `mode` (un-jitted for simulate/early_stop).

  For repeated calls build a runner once with `make_runner`.
  """
  checks.one_of("mode", mode, MODES)
  if mode == "compacted":
    return compacted(
      stack, rule, params, carry, rule_inputs=rule_inputs, **options
    )
  fn = simulate if mode == "simulate" else early_stop
  return fn(stack, rule, params, carry, rule_inputs=rule_inputs, **options)
