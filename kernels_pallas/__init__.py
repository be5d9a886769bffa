"""Pallas kernels for jaxexit; depends on jax only, never imports jaxexit."""

from kernels_pallas.position_attention import (position_attention,
                                               position_attention_reference)
from kernels_pallas.selection_scores import (selection_scores,
                                             selection_scores_reference)

__all__ = [
    "position_attention",
    "position_attention_reference",
    "selection_scores",
    "selection_scores_reference",
]
