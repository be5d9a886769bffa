"""What the early-exit decoding engine needs from a decoder LM.

A `DecoderBackbone` is a causal LM cut into layers with an explicit,
fixed-shape per-layer cache. Every method is pure: it never mutates NNX
state, the caches go in and come out, so the engine can call layer `i` inside
`lax.switch` / `lax.while_loop` branches and compile one program per decode
step whatever the exit pattern.

Positions and validity. Every layer call takes `positions [B, T]` (absolute
token positions, int32) and `valid [B, T]` (bool). A call writes the cache
only at valid positions; an invalid position is an exact no-op on the cache,
its output row is garbage and must be ignored. One call can therefore serve a
right-padded prefill (padding invalid), a decode step (T = 1), or the
deferred catch-up of `recompute` mode (a window of recent positions of which
only some still need this layer).

* Transformer: K/V are written at `positions`; a query at position p attends
  to cache slots s ≤ p whose `kv_valid` flag is set (after this call's own
  writes), so positions need not be contiguous. `freeze` clears `kv_valid`
  at the given positions (the "masked KV" state mode).
* Mamba: the recurrent state follows the sequence order; valid positions of
  one call must come after everything the cache has already absorbed, in
  order. An invalid step leaves conv and SSM state untouched (Δ = 0 and the
  conv window not shifted), so `freeze` is the identity.

Axes: B batch, T tokens, D width, V vocabulary, L layers.
"""

from typing import Protocol, runtime_checkable

from jaxexit.typing import Array, Bool, Float, Int, PyTree

LayerCache = PyTree


@runtime_checkable
class DecoderBackbone(Protocol):
  """A causal LM with an exit point after every layer (see module docstring).

  Attributes:
    num_layers: L, the number of blocks.
    d_model: D, the residual width.
    vocab_size: V.

  Optional attribute (not a Protocol member, so `isinstance` does not ask
  for it): `max_position`, the longest sequence (prompt + generated tokens)
  the model accepts, as its `__call__` enforces; absent or None means no
  limit (an SSM's recurrent state has none). The decoding entry points
  refuse prompts that would pass it (`jaxexit.decoding.inputs`).
  """

  num_layers: int
  d_model: int
  vocab_size: int

  def embed(self, tokens: Int[Array, "B T"]) -> Float[Array, "B T D"]:
    """Token embeddings (the residual stream entering layer 0)."""

  def init_cache(self, batch: int, max_len: int) -> tuple[LayerCache, ...]:
    """An empty cache: one entry per layer, sized for `max_len` positions."""

  def layer(
    self,
    i: int,
    h: Float[Array, "B T D"],
    cache: LayerCache,
    positions: Int[Array, "B T"],
    valid: Bool[Array, "B T"],
  ) -> tuple[Float[Array, "B T D"], LayerCache]:
    """Block `i` (static int): its output and its updated cache."""

  def propagate(
    self,
    i: int,
    h: Float[Array, "B T D"],
    cache: LayerCache,
    positions: Int[Array, "B T"],
    valid: Bool[Array, "B T"],
  ) -> LayerCache:
    """Fills block `i`'s cache from a shallower hidden state `h` (CALM).

    Transformer: only the pre-attention norm and the K/V projections run.
    Mamba: the block's full state update runs on `h`, its output is dropped.
    """

  def freeze(
    self,
    i: int,
    cache: LayerCache,
    positions: Int[Array, "B T"],
    valid: Bool[Array, "B T"],
  ) -> LayerCache:
    """Marks block `i`'s state at `positions` as skipped (masked KV / Δ=0)."""

  def final_norm(self, h: Float[Array, "B T D"]) -> Float[Array, "B T D"]:
    """The norm before the LM head."""

  def lm_head(self, h: Float[Array, "B T D"]) -> Float[Array, "B T V"]:
    """Output projection (tied or untied), float32 logits, no norm."""
