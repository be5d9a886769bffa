"""What an exit head emits after a layer.

Every execution mode (`jaxexit.execution`) and every incremental exit rule
(`jaxexit.exits.rules`) speak through `ExitHeadOutput`, so one model head
serves every paper: PALBERT fills `logits` and `halt`, BERxiT `logits` and
`score`, JEI-DNN `logits` and `score` (its gate), PABEE only `logits`.

Axes: every leaf has the batch axis first. After one layer the leaves are
`[B, ...]` (`logits [B, C]`, `halt [B]`); stacked over layers by
`execution.simulate` they are `[B, L, ...]`.
"""

import dataclasses

import jax

from jaxexit.typing import PyTree

# Pytree dataclass fields are rebuilt by JAX with tracers, ShapeDtypeStructs
# and sentinels, so they carry documentation types, not runtime-checked ones.
ArrayOrNone = PyTree


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ExitHeadOutput:
  """Per-layer exit-head output; fields a method does not use stay None.

  Attributes:
    logits: [B, C] class logits (or [B] / [B, 1] regression outputs).
    halt: [B] conditional halting probability λ_n ∈ (0, 1) (PonderNet,
      PALBERT): P(halt at n | not halted before n).
    score: [B] learned exit score: BERxiT's uncertainty u_n ∈ (0, 1) (exit
      when low) or JEI-DNN's gate g_l ∈ (0, 1).
    extra: any pytree with leading batch axis the caller wants back at the
      exit layer (a hidden state, a pooled vector).
  """

  logits: ArrayOrNone = None
  halt: ArrayOrNone = None
  score: ArrayOrNone = None
  extra: PyTree = None
