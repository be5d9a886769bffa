"""A tiny residual MLP stack with exit heads, for execution-mode tests."""

import jax
import jax.numpy as jnp

from jaxexit.execution import ExitStack
from jaxexit.exits.outputs import ExitHeadOutput

D, C = 8, 3


def make(num_layers: int, key=jax.random.key(0)):
  k1, k2, k3 = jax.random.split(key, 3)
  params = {
    "w": jax.random.normal(k1, (num_layers, D, D)) / jnp.sqrt(D),
    "head": jax.random.normal(k2, (num_layers, D, C)),
    "halt": jax.random.normal(k3, (num_layers, D)),
  }

  def layer_fn(p, layer, carry):
    h = carry["h"]
    h = h + jnp.tanh(h @ p["w"][layer])
    return {"h": h, "tag": carry["tag"]}

  def head_fn(p, layer, carry):
    h = carry["h"]
    return ExitHeadOutput(
      logits=h @ p["head"][layer],
      halt=jax.nn.sigmoid(h @ p["halt"][layer]),
      extra={"tag": carry["tag"], "h": h},
    )

  return ExitStack(layer_fn, head_fn, num_layers), params


def inputs(batch: int, key=jax.random.key(1)):
  return {
    "h": jax.random.normal(key, (batch, D)),
    "tag": jnp.arange(batch, dtype=jnp.int32),
  }
