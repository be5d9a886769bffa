"""Tiny `DecoderBackbone`s for engine tests: attention with a KV cache, and a
diagonal linear recurrence that behaves like Mamba (state in order, invalid
steps are no-ops). Random weights, float32, D=16."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

NEG_INF = jnp.finfo(jnp.float32).min


class KV(NamedTuple):
  k: jax.Array  # [B, S, D]
  v: jax.Array
  valid: jax.Array  # [B, S]


class _Base(nnx.Module):

  def __init__(self, vocab, d, layers, seed):
    rngs = nnx.Rngs(seed)
    self.num_layers, self.d_model, self.vocab_size = layers, d, vocab
    self.emb = nnx.Param(jax.random.normal(rngs(), (vocab, d)))
    self.w = nnx.Param(jax.random.normal(rngs(), (layers, 4, d, d)) / d**0.5)
    self.out = nnx.Param(jax.random.normal(rngs(), (d, vocab)) * 2 / d**0.5)

  def embed(self, tokens):
    return self.emb[...][tokens]

  def final_norm(self, h):
    return h * jax.lax.rsqrt(jnp.mean(h * h, -1, keepdims=True) + 1e-6)

  def lm_head(self, h):
    return (h @ self.out[...]).astype(jnp.float32)


class ToyAttention(_Base):

  def init_cache(self, batch, max_len):
    z = jnp.zeros((batch, max_len, self.d_model))
    return tuple(KV(z, z, jnp.zeros((batch, max_len), bool))
                 for _ in range(self.num_layers))

  def _write(self, i, x, cache, positions, valid):
    w = self.w[i]
    b = jnp.arange(x.shape[0])[:, None]
    new_k = jnp.where(valid[..., None], x @ w[0], cache.k[b, positions])
    new_v = jnp.where(valid[..., None], x @ w[1], cache.v[b, positions])
    flag = cache.valid[b, positions] | valid
    return KV(cache.k.at[b, positions].set(new_k),
              cache.v.at[b, positions].set(new_v),
              cache.valid.at[b, positions].set(flag))

  def layer(self, i, h, cache, positions, valid):
    x = self.final_norm(h)
    cache = self._write(i, x, cache, positions, valid)
    s = jnp.einsum("btd,bsd->bts", x @ self.w[i][2], cache.k)
    slots = jnp.arange(cache.k.shape[1])
    mask = (slots[None, None] <= positions[..., None]) & cache.valid[:, None]
    p = jax.nn.softmax(jnp.where(mask, s, NEG_INF), axis=-1)
    h = h + jnp.einsum("bts,bsd->btd", p, cache.v)
    return h + jnp.tanh(self.final_norm(h) @ self.w[i][3]), cache

  def propagate(self, i, h, cache, positions, valid):
    return self._write(i, self.final_norm(h), cache, positions, valid)

  def freeze(self, i, cache, positions, valid):
    b = jnp.arange(cache.k.shape[0])[:, None]
    keep = cache.valid[b, positions] & ~valid
    return cache._replace(valid=cache.valid.at[b, positions].set(keep))


class ToyRecurrent(_Base):
  """h_t = a ⊙ h_{t-1} + W x_t per layer; the state is the last h."""

  state_modes = ("oracle", "propagate", "recompute", "freeze")

  def init_cache(self, batch, max_len):
    return tuple(jnp.zeros((batch, self.d_model))
                 for _ in range(self.num_layers))

  def layer(self, i, h, cache, positions, valid):
    w = self.w[i]
    a = jax.nn.sigmoid(w[0][0])
    x = self.final_norm(h) @ w[1]

    def step(state, inp):
      x_t, ok = inp
      new = jnp.where(ok[:, None], a[None] * state + x_t, state)
      return new, new

    state, ys = jax.lax.scan(step, cache, (x.swapaxes(0, 1), valid.T))
    return h + jnp.tanh(ys.swapaxes(0, 1) @ w[2]), state

  def propagate(self, i, h, cache, positions, valid):
    return self.layer(i, h, cache, positions, valid)[1]

  def freeze(self, i, cache, positions, valid):
    return cache
