"""Pure functions of Llama / Mistral attention: RoPE, the KV cache, masks.

Rotary position embeddings (Su et al. 2021) in Hugging Face's `rotate_half`
layout (the two halves of a head, not interleaved pairs), optionally with
Llama 3.1 frequency scaling; grouped-query attention (Ainslie et al. 2023)
over a `KVCache` of S slots, where slot s holds the key/value of absolute
position s. A query at position p attends to the slots s ≤ p whose `valid`
flag is set (and p - s < sliding_window for Mistral), so positions need not
be contiguous and clearing a flag (`clear_kv`) hides a position. Used by
`jaxexit.models.llama.LlamaLM`.

Axes: B batch, T tokens, S cache slots (`max_len`), H query heads, Hkv
key/value heads, G = H / Hkv query heads per KV head, K head dim.
"""

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxexit import checks
from jaxexit.nn.functional import NEG_INF
from jaxexit.typing import Array, Bool, Float, Int


@dataclasses.dataclass(frozen=True, kw_only=True)
class Llama3RopeScaling:
  """Llama 3.1 RoPE frequency scaling (HF `rope_type="llama3"`).

  Wavelengths shorter than `original_max_position / high_freq_factor` keep
  their frequency, longer than `original_max_position / low_freq_factor` are
  slowed down by `factor`, and the band between is interpolated smoothly.
  """

  factor: float
  low_freq_factor: float
  high_freq_factor: float
  original_max_position: int

  def __post_init__(self):
    checks.in_range(
      "Llama3RopeScaling.factor",
      self.factor,
      0,
      math.inf,
      low_open=True,
      high_open=True,
    )
    checks.in_range(
      "Llama3RopeScaling.low_freq_factor",
      self.low_freq_factor,
      0,
      math.inf,
      low_open=True,
      high_open=True,
    )
    if not self.high_freq_factor > self.low_freq_factor:
      raise ValueError(
        "Llama3RopeScaling.high_freq_factor must be > low_freq_factor="
        f"{self.low_freq_factor}; got {self.high_freq_factor!r}"
      )
    checks.positive_int(
      "Llama3RopeScaling.original_max_position", self.original_max_position
    )


def rope_inv_freq(
  head_dim: int, theta: float, scaling: Llama3RopeScaling | None
) -> np.ndarray:
  """RoPE inverse frequencies `[K / 2]` float32, as HF computes them.

  A trace-time constant (numpy), so jitted code folds it.

  Args:
    head_dim: K (even).
    theta: the base wavelength (`LlamaConfig.rope_theta`).
    scaling: Llama 3.1 frequency scaling, or None (plain RoPE).
  """
  k = head_dim
  exponent = np.arange(0, k, 2).astype(np.float32) / np.float32(k)
  inv_freq = np.float32(1.0) / np.float32(theta) ** exponent
  s = scaling
  if s is None:
    return inv_freq
  # `_compute_llama3_parameters` in transformers' `modeling_rope_utils`.
  wavelen = np.float32(2 * math.pi) / inv_freq
  low_wavelen = s.original_max_position / s.low_freq_factor
  high_wavelen = s.original_max_position / s.high_freq_factor
  scaled = np.where(
    wavelen > low_wavelen, inv_freq / np.float32(s.factor), inv_freq
  )
  smooth = (
    (s.original_max_position / wavelen - s.low_freq_factor)
    / (s.high_freq_factor - s.low_freq_factor)
  ).astype(np.float32)
  smoothed = (1 - smooth) * scaled / np.float32(s.factor) + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def apply_rope(
  x: Float[Array, "B T _ K"], positions: Int[Array, "B T"], inv_freq: np.ndarray
) -> Float[Array, "B T _ K"]:
  """Rotates each head of `x` (H or Hkv heads) by its token's position.

  HF layout: dims j and j + K/2 form a pair rotated by positions · f_j.
  """
  freqs = (
    positions.astype(jnp.float32)[:, :, None]
    * jnp.asarray(inv_freq)[None, None, :]
  )  # [B, T, K/2]
  angles = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
  cos = jnp.cos(angles).astype(x.dtype)  # [B, T, 1, K]
  sin = jnp.sin(angles).astype(x.dtype)
  x1, x2 = jnp.split(x, 2, axis=-1)
  return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


class KVCache(NamedTuple):
  """One block's key/value cache (a pytree).

  Attributes:
    k: [B, S, Hkv, K] keys after RoPE, slot s = absolute position s.
    v: [B, S, Hkv, K] values.
    valid: [B, S] bool, True where a written, unfrozen key lives.
  """

  k: Array
  v: Array
  valid: Array


def _write_rows(
  positions: Int[Array, "B T"], valid: Bool[Array, "B T"], num_slots: int
) -> tuple[Array, Array]:
  """Scatter indices `(batch [B, T], slot [B, T])`; invalid rows point past
  the last slot so `mode="drop"` discards them. (Masking the value with
  `where` instead would race with a valid row writing the same slot.)"""
  b, t = positions.shape
  rows = jnp.broadcast_to(jnp.arange(b, dtype=jnp.int32)[:, None], (b, t))
  return rows, jnp.where(valid, positions, num_slots)


def write_kv(
  cache: KVCache,
  k: Float[Array, "B T Hkv K"],
  v: Float[Array, "B T Hkv K"],
  positions: Int[Array, "B T"],
  valid: Bool[Array, "B T"],
) -> KVCache:
  """Writes k/v at `positions` for valid rows and sets their flags."""
  rows, slots = _write_rows(positions, valid, cache.valid.shape[1])
  return KVCache(
    k=cache.k.at[rows, slots].set(k.astype(cache.k.dtype), mode="drop"),
    v=cache.v.at[rows, slots].set(v.astype(cache.v.dtype), mode="drop"),
    valid=cache.valid.at[rows, slots].set(True, mode="drop"),
  )


def clear_kv(
  cache: KVCache, positions: Int[Array, "B T"], valid: Bool[Array, "B T"]
) -> KVCache:
  """Clears the flags at `positions` of valid rows, so later queries skip
  those keys (the keys and values stay in place)."""
  rows, slots = _write_rows(positions, valid, cache.valid.shape[1])
  return cache._replace(
    valid=cache.valid.at[rows, slots].set(False, mode="drop")
  )


def attention_mask(
  positions: Int[Array, "B T"],
  kv_valid: Bool[Array, "B S"],
  sliding_window: int | None,
) -> Bool[Array, "B T S"]:
  """True where the query at `positions` may attend to cache slot s."""
  slots = jnp.arange(kv_valid.shape[1], dtype=jnp.int32)[None, None, :]
  p = positions[:, :, None]
  mask = (slots <= p) & kv_valid[:, None, :]
  if sliding_window is not None:
    mask &= (p - slots) < sliding_window
  return mask


def attend(
  q: Float[Array, "B T H K"], cache: KVCache, mask: Bool[Array, "B T S"]
) -> Float[Array, "B T H K"]:
  """Grouped-query softmax attention of `q` over every cache slot.

  Query head j reads KV head j // G (HF `repeat_kv`). The scores and the
  softmax are float32; a fully masked row gets uniform weights instead of
  NaN (its output is garbage the caller ignores).
  """
  b, t, h, k_dim = q.shape
  hkv = cache.k.shape[2]
  q = q.reshape(b, t, hkv, h // hkv, k_dim)  # [B, T, Hkv, G, K]
  # Einsum letters: H is Hkv here, G the query heads sharing it.
  logits = jnp.einsum(
    "BTHGK,BSHK->BHGTS", q, cache.k, preferred_element_type=jnp.float32
  )
  logits = jnp.where(mask[:, None, None], logits * k_dim**-0.5, NEG_INF)
  probs = jax.nn.softmax(logits, axis=-1).astype(cache.v.dtype)
  out = jnp.einsum("BHGTS,BSHK->BTHGK", probs, cache.v)
  return out.reshape(b, t, h, k_dim)  # [B, T, H, K]
