"""Exit classifiers for decoder LMs: what sits at each exit point.

An `DecoderExitHeads` object turns the residual stream after an exit layer into
next-token logits. Heads may carry a recurrent state over the sequence (the
DYNAMAX Mamba classifier), so they follow the backbone's cache convention:
explicit per-exit states, `positions [B, T]` and `valid [B, T]` (invalid
steps leave the state untouched). Heads receive the backbone as an argument
instead of holding it, so no NNX module is referenced twice.

`LMHeadExits` is the CALM baseline: the backbone's own final norm and LM head
applied to intermediate states; it has no parameters and no state. The
trainable kinds live in `jaxexit.methods.dynamax`.

Axes: B batch, T tokens, D width, V vocabulary.
"""

from typing import Protocol, runtime_checkable

from flax import nnx

from jaxexit.decoding.backbone import DecoderBackbone
from jaxexit.typing import Array, Bool, Float, Int, PyTree


@runtime_checkable
class DecoderExitHeads(Protocol):
  """Next-token classifiers at the exits of a `DecoderBackbone`."""

  def init_state(
    self, num_exits: int, batch: int, max_len: int
  ) -> tuple[PyTree, ...]:
    """One state per exit (`()` for stateless heads)."""

  def __call__(
    self,
    backbone: DecoderBackbone,
    e: int,
    h: Float[Array, "B T D"],
    state: PyTree,
    positions: Int[Array, "B T"],
    valid: Bool[Array, "B T"],
  ) -> tuple[Float[Array, "B T V"], PyTree]:
    """Exit `e`'s float32 logits and its updated state."""

  def advance(
    self,
    backbone: DecoderBackbone,
    e: int,
    h: Float[Array, "B T D"],
    state: PyTree,
    positions: Int[Array, "B T"],
    valid: Bool[Array, "B T"],
  ) -> PyTree:
    """Exit `e`'s state after absorbing `h`, without computing logits."""


class LMHeadExits(nnx.Module):
  """Shared final norm + LM head on every exit (CALM; DYNAMAX kind (a)).

  No parameters: an NNX module only so every kind of head travels through
  `nnx.split` / `jit` the same way.
  """

  def init_state(
    self, num_exits: int, batch: int, max_len: int
  ) -> tuple[PyTree, ...]:
    del batch, max_len
    return ((),) * num_exits

  def __call__(self, backbone, e, h, state, positions, valid):
    del e, positions, valid
    return backbone.lm_head(backbone.final_norm(h)), state

  def advance(self, backbone, e, h, state, positions, valid):
    del backbone, e, h, positions, valid
    return state
