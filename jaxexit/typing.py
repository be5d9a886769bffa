"""Array aliases and the dimension vocabulary used across jaxexit.

Every module names axes with the same letters, in shapes in docstrings, in
jaxtyping annotations, in einsum strings and as suffixes of local names
(`logits_BLC`):

  B  batch                     L  layers / exits (exit axis)
  T  tokens (sequence)         C  classes
  D  model width               H  attention heads
  K  head dimension            F  MLP hidden width
  V  vocabulary                N  image tokens
  S  SSM state                 P  patches

Per-exit quantities put the exit axis right after the batch axes: a halting
probability is `[B, L]` (or `[B, T, L]` for token-level exits), per-exit logits
are `[B, L, C]`.
"""

from collections.abc import Callable
from typing import Any

import jax
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

PyTree = Any
Schedule = Callable[[int], int]

__all__ = [
  "Array",
  "Bool",
  "Float",
  "Int",
  "PRNGKeyArray",
  "PyTree",
  "Schedule",
  "jax",
]
