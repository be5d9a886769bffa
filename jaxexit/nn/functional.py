"""Small functions the models share: the masking constant and dropout.

(`kernels_pallas` keeps its own copy of the constant: it sits below
`jaxexit` in the import order and cannot import it.)
"""

import jax
import jax.numpy as jnp

from jaxexit.typing import Array, PRNGKeyArray

# Masked attention logits: the most negative float32, not -inf, so a row
# with every position masked gives a uniform softmax instead of NaN.
NEG_INF = jnp.finfo(jnp.float32).min


def dropout(x: Array, rate: float, key: PRNGKeyArray | None) -> Array:
  """Inverted dropout: zeros with probability `rate`, the rest / (1 - rate).

  Identity when `key` is None (inference) or `rate` is 0; the output keeps
  `x`'s dtype.
  """
  if key is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)
