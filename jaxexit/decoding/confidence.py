"""Per-token exit confidences for decoding (CALM's measures, §5.1).

Axes: B batch, D width, V vocabulary.
"""

import jax.numpy as jnp

from jaxexit.exits import confidence
from jaxexit.typing import Array, Float


def token_confidence(
  rule: str,
  logits: Float[Array, "B V"],
  h_in: Float[Array, "B D"],
  h_out: Float[Array, "B D"],
  score: Float[Array, "B"] | None,
) -> Float[Array, "B"]:
  """The confidence `rule` assigns to an exit (see `DecodeConfig.rule`).

  Args:
    rule: one of `config.RULES`.
    logits: [B, V] the exit's next-token logits.
    h_in, h_out: [B, D] hidden states entering / leaving the segment that
      ends at this exit (`cosine`).
    score: [B] the learned head's score in [0, 1] (`learned`), else None.

  Returns:
    [B] float32 confidence; the token exits when it is ≥ λ.
  """
  if rule == "max_softmax":
    return confidence.max_softmax(logits)
  if rule == "margin":
    return confidence.margin(logits)
  if rule == "cosine":
    a = h_in.astype(jnp.float32)
    b = h_out.astype(jnp.float32)
    norms = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
    return jnp.sum(a * b, axis=-1) / jnp.maximum(norms, 1e-12)
  if rule == "learned":
    if score is None:
      raise ValueError("rule='learned' needs exit heads with a `score` method")
    return score.astype(jnp.float32)
  raise ValueError(f"unknown rule={rule!r}")
