"""Dispatch between the XLA references and the Pallas kernels of pruning.

`impl="xla"` gives the pure-jnp `*_reference` functions of
`kernels_pallas`; `impl="pallas"` the Pallas kernels with the same
signatures (they pick interpret mode on CPU themselves). The library
default is "xla": in interpret mode on CPU the kernels are correct but slow.
"""

from collections.abc import Callable

from jaxexit import checks
from kernels_pallas.position_attention import (
  position_attention,
  position_attention_reference,
)
from kernels_pallas.selection_scores import (
  selection_scores,
  selection_scores_reference,
)

IMPLS = ("xla", "pallas")


def attention_fn(impl: str) -> Callable:
  """`position_attention(q, k, v, q_pos, k_pos, k_valid)` of `impl`."""
  checks.one_of("impl", impl, IMPLS)
  return position_attention_reference if impl == "xla" else position_attention


def scores_fn(impl: str) -> Callable:
  """`selection_scores(q, k, q_pos, k_pos, q_valid, k_valid, *,
  span_start, span_len)` of `impl`."""
  checks.one_of("impl", impl, IMPLS)
  return selection_scores_reference if impl == "xla" else selection_scores
