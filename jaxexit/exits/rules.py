"""Incremental exit rules, in optax's `(init, update)` shape.

An `ExitRule` decides, layer by layer, which examples exit. The three
execution modes in `jaxexit.execution` call the same rule, so a method's exit
semantics are written once and hold whether all layers run (`simulate`), the
loop stops early (`early_stop`) or exited examples leave the batch
(`compacted`).

Contract:
  * `state = rule.init(batch_size, rule_inputs)`: every leaf of `state` has
    the batch axis first (`[B, ...]`), so compaction can gather it.
    `rule_inputs` is the per-batch data some rules need (a PRNG key, preset
    depths); rules that need none ignore it.
  * `state, exit_now = rule.update(state, head_out, layer)`: `head_out` is the
    `ExitHeadOutput` of layer `layer` (0-based; a Python int or a traced int32
    scalar), `exit_now` is `[B]` bool. The execution mode forces an exit at
    the last layer and keeps the first exit of each example; a rule never
    needs to remember that an example already left.
  * `rule.reads` names the `ExitHeadOutput` fields `update` reads, so a
    caller can skip computing the others (early-exit decoding computes an
    exit's vocabulary projection only for rules that read `logits`).
  * `rule.measure`, when set, is `head_out -> [B] float32`: the scalar a
    threshold rule compares with its threshold, for reports and for
    calibrating the threshold (None for rules that are not one threshold).

This file holds the protocol and the generic rules. Each paper's rule
factory lives beside its vectorised twin over all layers at once
(`halting.q_exit_rule` beside `halting.q_exit`, `confidence.patience_rule`
beside `confidence.patience_exit`, ...); tests check that they agree.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxexit import checks
from jaxexit.exits.outputs import ExitHeadOutput
from jaxexit.typing import Array, PyTree

RuleState = PyTree


# The `ExitHeadOutput` fields a rule may read.
FIELDS = ("logits", "halt", "score", "extra")


class ExitRule(NamedTuple):
  """Pure functions deciding exits one layer at a time (see the contract)."""

  init: Callable[[int, Any], RuleState]
  update: Callable[
    [RuleState, ExitHeadOutput, Array | int], tuple[RuleState, Array]
  ]
  reads: tuple[str, ...] = ("logits",)
  measure: Callable[[ExitHeadOutput], Array] | None = None


def _no_state(batch_size: int, rule_inputs=None) -> RuleState:
  del rule_inputs
  # A dummy [B] leaf keeps the "batch axis first" contract uniform.
  return jnp.zeros((batch_size,), jnp.int32)


def memoryless(
  condition: Callable[[ExitHeadOutput, Array | int], Array],
  *,
  reads: tuple[str, ...] = ("logits",),
) -> ExitRule:
  """A rule whose decision depends only on the current layer's output.

  Args:
    condition: `(head_out, layer) -> [B] bool`.
    reads: the `ExitHeadOutput` fields `condition` reads.
  """

  def update(state, head_out, layer):
    return state, jnp.asarray(condition(head_out, layer), bool)

  return ExitRule(_no_state, update, _check_reads(reads))


def at_least(
  measure: Callable[[ExitHeadOutput], Array],
  threshold,
  *,
  reads: tuple[str, ...],
) -> ExitRule:
  """Exit where `measure(head_out) >= threshold` (a confidence threshold).

  Args:
    measure: `head_out -> [B]` float32 confidence.
    threshold: a scalar; may be traced (a threshold sweep under `jit` then
      reuses one compiled program).
    reads: the `ExitHeadOutput` fields `measure` reads.
  """
  rule = memoryless(lambda out, layer: measure(out) >= threshold, reads=reads)
  return rule._replace(measure=measure)


def never() -> ExitRule:
  """Exits disabled: every example runs all layers (the full model)."""
  return memoryless(
    lambda out, layer: jnp.zeros(_batch_shape(out), bool), reads=()
  )


def always() -> ExitRule:
  """Every example exits at the first layer."""
  return memoryless(
    lambda out, layer: jnp.ones(_batch_shape(out), bool), reads=()
  )


def fixed_depth(num_layers_used: int) -> ExitRule:
  """Static k-layer model: each example exits after `num_layers_used` layers."""
  checks.positive_int("num_layers_used", num_layers_used)
  return memoryless(
    lambda out, layer: jnp.full(
      _batch_shape(out), jnp.asarray(layer) >= num_layers_used - 1
    ),
    reads=(),
  )


def preset_depth() -> ExitRule:
  """Exits each example after a depth given per example in `rule_inputs`.

  `rule_inputs` is `[B]` int, the number of layers example b should use
  (1..L). Used by tests and benchmarks to draw random exit decisions.
  """

  def init(batch_size, rule_inputs):
    shape = None if rule_inputs is None else np.shape(rule_inputs)
    if shape != (batch_size,):
      raise ValueError(
        f"preset_depth needs rule_inputs of shape [B]=({batch_size},); got "
        f"rule_inputs with shape {shape}"
      )
    return jnp.asarray(rule_inputs, jnp.int32)

  def update(depth, head_out, layer):
    del head_out
    return depth, jnp.asarray(layer) >= depth - 1

  return ExitRule(init, update, reads=())


def _check_reads(reads) -> tuple[str, ...]:
  reads = tuple(reads)
  for name in reads:
    checks.one_of("ExitRule.reads", name, FIELDS)
  return reads


def _batch_shape(out: ExitHeadOutput) -> tuple[int, ...]:
  leaves = jax.tree.leaves(out)
  if not leaves:
    raise ValueError(
      "ExitHeadOutput has no array fields; the batch size is unknown"
    )
  return leaves[0].shape[:1]
