"""Which vision tokens survive a drop: importance scores and static top-k.

HiDrop / PyramidDrop (spec `hidrop_pallas.md` §2.2 step 3, §2.5) rank the
vision tokens by the attention the last instruction token(s) pay them,
computed with a decoder block's input norm, q and k projections and RoPE at
the tokens' current position ids, for the query rows only (the kernels'
`selection_scores` contract: softmax over every visible key, mean over
heads and valid query rows, vision columns only). The whole score path runs
in float32 whatever the model's compute dtype, because the released code's
bf16 cast makes many small scores tie.

`topk_indices` is the hard selection the released code effectively uses
(static k, ties to the lower index, kept indices sorted). `soft_topk_mask`
is its DMS-style "differentiable top-k" (§2.4): a sigmoid of rank-normalised
scores whose 0.5-threshold is exactly the top-k set; its straight-through
twin routes gradients through a smooth rank surrogate.

Axes: B batch, N buffer tokens (text then vision), Q query rows, D width,
H query heads, Hkv key/value heads, K head dim, Nv scored vision tokens.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxexit import checks
from jaxexit.models.llama import LlamaBlock
from jaxexit.models.llama_attention import apply_rope
from jaxexit.pruning.kernels import IMPLS, scores_fn
from jaxexit.typing import Array, Bool, Float, Int


def _rms_norm_f32(
  norm: nnx.RMSNorm, h: Float[Array, "B N D"]
) -> Float[Array, "B N D"]:
  # nnx.RMSNorm would return the model's compute dtype; same maths in f32.
  h = h.astype(jnp.float32)
  var = jnp.mean(h * h, axis=-1, keepdims=True)
  scale = norm.scale[...].astype(jnp.float32)[None, None, :]
  return h * jax.lax.rsqrt(var + norm.epsilon) * scale


def _heads_f32(
  linear: nnx.Linear, x: Float[Array, "B N D"], head_dim: int
) -> Float[Array, "B N _ K"]:
  kernel = linear.kernel[...].astype(jnp.float32)
  y = jnp.einsum("BND,DE->BNE", x, kernel)
  return y.reshape(*y.shape[:2], -1, head_dim)  # [B, N, H or Hkv, K]


def importance_scores(
  block: LlamaBlock,
  h: Float[Array, "B N D"],
  positions: Int[Array, "B N"],
  valid: Bool[Array, "B N"],
  query_index: Int[Array, "B Q"],
  query_valid: Bool[Array, "B Q"],
  *,
  span_start: int,
  span_len: int,
  inv_freq: np.ndarray,
  impl: str = "xla",
  stop_gradient: bool = True,
) -> Float[Array, "B Nv"]:
  """Attention paid by the query rows to the buffer span `span_start ..
  span_start + span_len - 1`, with `block`'s norm, q, k and RoPE.

  Args:
    block: the scoring block (the next layer's for HiDrop / PyramidDrop,
      the layer just run for FastV).
    h: [B, N, D] buffer hidden states that block would read.
    positions: [B, N] RoPE / causality position ids of the buffer.
    valid: [B, N] False at padding and dropped keys.
    query_index: [B, Q] buffer indices of the query rows (the last
      instruction token(s)).
    query_valid: [B, Q] which query rows count in the mean.
    span_start, span_len: static; the scored columns (the vision tokens).
    inv_freq: RoPE inverse frequencies of the model.
    impl: "xla" (reference) or "pallas" (kernel).
    stop_gradient: detach `h` and the block's weights, as the release does.
      False lets a soft selection train the scoring path; the Pallas
      scores kernel is not differentiable, so the scores then come from
      the XLA reference whatever `impl` says.

  Returns:
    [B, span_len] float32 scores; zeros for a row without valid queries.
  """
  if span_start < 0 or span_start + span_len > h.shape[1]:
    raise ValueError(
      f"span [{span_start}, {span_start + span_len}) must lie "
      f"within the buffer of h.shape={h.shape}"
    )
  checks.same_shape(("query_index", "query_valid"), query_index, query_valid)
  checks.one_of("impl", impl, IMPLS)
  norm, attn = block.input_layernorm, block.self_attn
  x = _rms_norm_f32(norm, h)
  q_in = jnp.take_along_axis(x, query_index[..., None], axis=1)  # [B, Q, D]
  q_pos = jnp.take_along_axis(positions, query_index, axis=1)  # [B, Q]
  q = apply_rope(
    _heads_f32(attn.q_proj, q_in, attn.head_dim), q_pos, inv_freq
  )  # [B, Q, H, K]
  k = apply_rope(
    _heads_f32(attn.k_proj, x, attn.head_dim), positions, inv_freq
  )  # [B, N, Hkv, K]
  if stop_gradient:
    q, k = jax.lax.stop_gradient(q), jax.lax.stop_gradient(k)
  else:
    impl = "xla"  # The Pallas kernel detaches its inputs.
  return scores_fn(impl)(
    q,
    k,
    q_pos,
    positions,
    query_valid,
    valid,
    span_start=span_start,
    span_len=span_len,
  )


def topk_indices(scores: Float[Array, "B N"], k: int) -> Int[Array, "B k"]:
  """Indices of the k highest scores per row, sorted ascending.

  Ties go to the lower index (`lax.top_k` is stable), so exactly k tokens
  are kept even when scores collide.

  Args:
    scores: [B, N].
    k: static, 1 ≤ k ≤ N.

  Returns:
    [B, k] int32.
  """
  _check_k(scores, k)
  _, idx = jax.lax.top_k(scores, k)
  return jnp.sort(idx.astype(jnp.int32), axis=-1)


def _check_k(scores: Array, k: int) -> None:
  checks.positive_int("k", k)
  if k > scores.shape[-1]:
    raise ValueError(
      f"k={k} exceeds the {scores.shape[-1]} scored tokens "
      f"(scores.shape={scores.shape})"
    )


def _hard_rank(s: Float[Array, "B N"]) -> Float[Array, "B N"]:
  """c'_i = (1/N) Σ_j 1[c_j ≤ c_i] (O(N²) pairwise compare)."""
  return jnp.mean(
    s[..., None, :] <= s[..., :, None], axis=-1, dtype=jnp.float32
  )


def _mask_from_rank(
  rank: Float[Array, "B N"], k: int, lam: float
) -> Float[Array, "B N"]:
  n = rank.shape[-1]
  return jax.nn.sigmoid(lam * n * (rank - (1.0 - k / n)))


def soft_topk_mask(
  scores: Float[Array, "B N"], k: int, lam: float = 1.0
) -> Float[Array, "B N"]:
  """HiDrop's rank-normalised sigmoid mask (spec §2.4).

  m_i = sigmoid(λ · N · (c'_i − (1 − k/N))) with c'_i = (1/N) Σ_j
  1[c_j ≤ c_i]. Without ties, m_i > 0.5 exactly on the top-k. The rank is
  a step function, so this mask has zero gradient w.r.t. the scores (as
  released); see `straight_through_topk_mask`.

  Args:
    scores: [B, N].
    k: static keep count, 1 ≤ k ≤ N.
    lam: λ > 0, sharpness.

  Returns:
    [B, N] float32 in (0, 1).
  """
  _check_k(scores, k)
  return _mask_from_rank(_hard_rank(scores.astype(jnp.float32)), k, lam)


def straight_through_topk_mask(
  scores: Float[Array, "B N"], k: int, lam: float = 1.0, tau: float = 0.1
) -> Float[Array, "B N"]:
  """`soft_topk_mask` forward, gradient of a smooth rank surrogate.

  The surrogate rank is mean_j sigmoid((z_i − z_j) / τ) on the scores
  standardised per row (z = (c − mean) / std), so τ is in units of the
  row's spread: attention scores are ~1/N and a raw τ would not transfer
  between sizes. The forward value is exactly `soft_topk_mask`.

  Args:
    scores: [B, N].
    k: static keep count, 1 ≤ k ≤ N.
    lam: λ > 0, sharpness.
    tau: τ > 0, temperature of the surrogate.

  Returns:
    [B, N] float32.
  """
  _check_k(scores, k)
  checks.in_range("tau", tau, 0.0, np.inf, low_open=True)
  s = scores.astype(jnp.float32)
  z = (s - s.mean(-1, keepdims=True)) / (s.std(-1, keepdims=True) + 1e-12)
  smooth = jax.nn.sigmoid((z[..., :, None] - z[..., None, :]) / tau).mean(-1)
  # (smooth - sg(smooth)) is exactly 0, so the forward is exactly hard.
  rank = _hard_rank(s) + (smooth - jax.lax.stop_gradient(smooth))
  return _mask_from_rank(rank, k, lam)
