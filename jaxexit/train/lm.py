"""Next-token loss for any `DecoderBackbone` (training LMs from scratch).

The model runs its prefill path (fresh cache of T positions, every position
valid: packed rows), so the trained weights are exactly the ones decoding
uses. Logits and the cross-entropy are float32.

Axes: B batch, T tokens, V vocabulary.
"""

import jax
import jax.numpy as jnp

from jaxexit.typing import Array, Float, Int


def backbone_logits(model, tokens: Int[Array, "B T"]) -> Float[Array, "B T V"]:
  """Full-depth logits of a `DecoderBackbone` on fully valid rows."""
  batch, length = tokens.shape
  positions = jnp.broadcast_to(jnp.arange(length), tokens.shape)
  valid = jnp.ones(tokens.shape, bool)
  caches = model.init_cache(batch, length)
  h = model.embed(tokens)
  for i in range(model.num_layers):
    h, _ = model.layer(i, h, caches[i], positions, valid)
  return model.lm_head(model.final_norm(h))


def causal_lm_loss(model, batch: dict, rng) -> tuple[Array, dict]:
  """Mean next-token cross-entropy of `batch["tokens"]` [B, T].

  A `jaxexit.train.train` loss: `(model, batch, rng) -> (loss, metrics)`.
  """
  del rng
  tokens = batch["tokens"]
  logp = jax.nn.log_softmax(backbone_logits(model, tokens[:, :-1]), axis=-1)
  nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
  loss = jnp.mean(nll)
  accuracy = jnp.mean(jnp.argmax(logp, axis=-1) == tokens[:, 1:])
  return loss, {"loss": loss, "accuracy": accuracy}
