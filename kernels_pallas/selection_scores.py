"""Token-importance scores for pruning: attention of a few query rows.

PyramidDrop / HiDrop / FastV (`hidrop_pallas.md` §2.5, §3.3) rank vision
tokens by the attention the last instruction token(s) pay them: softmax over
ALL visible keys (text and vision) per head, then the mean over heads and
over the valid query rows, read on the vision span only. Only the Q query
rows are computed, never the [B, H, T, T] map.

`selection_scores` is the Pallas kernel: per (batch, key/value head), pass 1
runs an online softmax over every key block to get each row's max and
normaliser, pass 2 recomputes the probabilities on the span's blocks only
and sums them with the rows' weights. The [B, H, Q, N] probabilities are
never materialised. Lowerings as in `position_attention` (its docstring says
why the GPU one is Triton): GPU keys stay [B, N, Hkv, K], TPU keys are
transposed to [B, Hkv, N, K]; the grid is (B, Hkv) on both.

Padding (explicit): N is padded to a tile multiple (padding keys are never
seen), the span is widened to whole aligned tiles (the extra columns are
computed and dropped), the rows to a power of two >= 16 (GPU) or a multiple
of 8 (TPU) and the head dim to a power of two (GPU) or 128 (TPU).

Axes: B batch, Q query rows, N keys, H query heads, Hkv key/value heads,
G = H / Hkv, K head dim, Nv = span_len, R = G * Q rows per key/value head.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jaxtyping import Array, Bool, Float, Int

from kernels_pallas import _common as common
from kernels_pallas._common import NEG_INF, dot_nt


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class SelectionScoresBlocks:
  """Tiles of `selection_scores`.

  Attributes:
    block_k: keys per tile; GPU: a power of two >= 16, TPU: a multiple of
      128 (the lane dimension of the key-position row and output tiles).
  """

  block_k: int = 128

  def __post_init__(self):
    common.check_positive(type(self).__name__, "block_k", self.block_k)

  @classmethod
  def for_backend(cls, backend: str) -> "SelectionScoresBlocks":
    """Default tiles: 64 keys on GPU (Triton), 128 on TPU (one lane row)."""
    if backend not in common.BACKENDS:
      raise ValueError(
        f"backend must be one of {common.BACKENDS}; got {backend=}"
      )
    return cls(block_k=64) if backend == "gpu" else cls()

  def check(self, backend: str) -> None:
    """Raises ValueError naming the rule if a tile breaks `backend`'s."""
    common.check_tile(
      type(self).__name__, "block_k", self.block_k, backend, common.TPU_LANES
    )

  def fit(self, backend: str, n: int) -> "SelectionScoresBlocks":
    """The tiles used for N keys (shrunk if N is shorter than a tile)."""
    return SelectionScoresBlocks(
      block_k=common.fit_block(self.block_k, n, backend, common.TPU_LANES)
    )


def selection_scores_reference(
  q: Float[Array, "B Q H K"],
  k: Float[Array, "B N Hkv K"],
  q_pos: Int[Array, "B Q"],
  k_pos: Int[Array, "B N"],
  q_valid: Bool[Array, "B Q"],
  k_valid: Bool[Array, "B N"],
  *,
  span_start: int,
  span_len: int,
) -> Float[Array, "B Nv"]:
  """Plain XLA scores: the reference of `selection_scores`.

  Args:
    q: [B, Q, H, K] query rows (RoPE applied).
    k: [B, N, Hkv, K] keys (RoPE applied).
    q_pos: [B, Q] int32 position ids of the query rows.
    k_pos: [B, N] int32 position ids of the keys.
    q_valid: [B, Q] bool, which query rows count in the mean.
    k_valid: [B, N] bool, False at padding.
    span_start, span_len: static; the scored key columns are
      span_start .. span_start + span_len - 1.

  Returns:
    [B, span_len] float32: mean over heads and valid query rows of the
    softmax probabilities; zeros for a row without valid queries.
  """
  b, nq, h, d = q.shape
  hkv = k.shape[2]
  qg = q.reshape(b, nq, hkv, h // hkv, d).astype(jnp.float32)
  logits = jnp.einsum("BQHGK,BNHK->BHGQN", qg, k.astype(jnp.float32)) * d**-0.5
  mask = common.position_mask(q_pos, k_pos, k_valid)[:, None, None]
  probs = jax.nn.softmax(jnp.where(mask, logits, NEG_INF), axis=-1)
  probs = jnp.where(mask, probs, 0.0)
  span = probs[..., span_start : span_start + span_len]  # [B, Hkv, G, Q, Nv]
  per_query = span.mean(axis=(1, 2))  # [B, Q, Nv]
  weights = q_valid.astype(jnp.float32)
  total = jnp.einsum("BQN,BQ->BN", per_query, weights)
  count = weights.sum(axis=1, keepdims=True)
  return jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)


def _scores_kernel(
  q_ref,
  k_ref,
  pos_ref,
  w_ref,
  kpos_ref,
  out_ref,
  *,
  scale,
  block_k,
  first_block,
):
  """One (batch, key/value head): [span] Σ_rows weight · probability."""
  q = q_ref[...]  # [R, K]
  row_pos = pos_ref[...]  # [R, 1]

  def logits(j):
    keys = pl.ds(pl.multiple_of(j * block_k, block_k), block_k)
    mask = kpos_ref[:, keys] <= row_pos  # [R, block_k]
    s = jnp.where(mask, dot_nt(q, k_ref[keys, :]) * scale, NEG_INF)
    return s, mask

  def stats(j, carry):  # online softmax: running max and normaliser
    m, l = carry
    s, mask = logits(j)
    m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))  # [R, 1]
    p = jnp.where(mask, jnp.exp(s - m_new), 0.0)
    return m_new, jnp.exp(m - m_new) * l + jnp.sum(p, axis=1, keepdims=True)

  rows = q.shape[0]
  m, l = lax.fori_loop(
    0,
    k_ref.shape[0] // block_k,
    stats,
    (
      jnp.full((rows, 1), NEG_INF, jnp.float32),
      jnp.zeros((rows, 1), jnp.float32),
    ),
  )
  # A row that sees no key has l == 0 and all-masked probabilities: it adds 0.
  w = w_ref[...] / jnp.where(l > 0, l, 1.0)  # [R, 1]

  def column(j, carry):  # output tile j is key tile first_block + j
    s, mask = logits(first_block + j)
    p = jnp.where(mask, jnp.exp(s - m), 0.0)
    out_ref[:, pl.ds(pl.multiple_of(j * block_k, block_k), block_k)] = jnp.sum(
      p * w, axis=0, keepdims=True
    )  # [1, block_k]
    return carry

  lax.fori_loop(0, out_ref.shape[1] // block_k, column, 0)


@functools.partial(
  jax.jit,
  static_argnames=("span_start", "span_len", "blocks", "backend", "interpret"),
)
def _scores(
  q,
  k,
  q_pos,
  k_pos,
  q_valid,
  k_valid,
  *,
  span_start,
  span_len,
  blocks,
  backend,
  interpret,
):
  b, nq, h, d = q.shape
  n, hkv = k.shape[1], k.shape[2]
  g = h // hkv
  bk = blocks.block_k
  dp = common.padded_head_dim(d, backend)
  # Triton dots want >= 16 power-of-two rows; Mosaic a multiple of 8.
  rows = (
    max(common.MIN_GPU_BLOCK, pl.next_power_of_2(g * nq))
    if backend == "gpu"
    else common.round_up(g * nq, 8)
  )
  # The scored columns are computed from the tile holding span_start on, so
  # every tile starts aligned; `offset` columns are dropped at the end.
  lo, hi = span_start // bk * bk, common.round_up(span_start + span_len, bk)
  offset, n_p = span_start - lo, max(common.round_up(n, bk), hi)
  # Row r = g * Q + q of key/value head `hkv` is query head hkv * G + g.
  q_rows = q.reshape(b, nq, hkv, g, d).transpose(0, 2, 3, 1, 4)
  q_rows = common.pad_axis(
    common.pad_axis(q_rows.reshape(b, hkv, g * nq, d), 3, dp), 2, rows
  )  # [B, Hkv, R, Kp]
  k = common.pad_axis(common.pad_axis(k, 3, dp), 1, n_p)  # [B, Np, Hkv, Kp]
  row_pos = common.pad_axis(
    jnp.tile(q_pos.astype(jnp.int32), (1, g)), 1, rows, common.SEES_NOTHING
  )  # [B, R]
  valid = q_valid.astype(jnp.float32)
  count = valid.sum(axis=1, keepdims=True)
  # Mean over heads and valid rows as one weighted sum; no valid row: zeros.
  weight = jnp.where(count > 0, valid / (h * jnp.maximum(count, 1.0)), 0.0)
  row_w = common.pad_axis(jnp.tile(weight, (1, g)), 1, rows)  # [B, R]
  k_pos = common.pad_axis(
    jnp.where(k_valid, k_pos.astype(jnp.int32), common.NEVER_SEEN),
    1,
    n_p,
    common.NEVER_SEEN,
  )  # [B, Np]
  if backend == "tpu":  # a squeezed head may not be a block's 2nd-to-last dim
    k = k.transpose(0, 2, 1, 3)  # [B, Hkv, Np, Kp]
    k_spec = pl.BlockSpec((None, None, n_p, dp), lambda b, h: (b, h, 0, 0))
  else:
    k_spec = pl.BlockSpec((None, n_p, None, dp), lambda b, h: (b, 0, h, 0))
  column = pl.BlockSpec((None, rows, 1), lambda b, h: (b, 0, 0))
  per_head = pl.pallas_call(
    functools.partial(
      _scores_kernel, scale=d**-0.5, block_k=bk, first_block=lo // bk
    ),
    grid=(b, hkv),
    in_specs=[
      pl.BlockSpec((None, None, rows, dp), lambda b, h: (b, h, 0, 0)),
      k_spec,
      column,
      column,
      pl.BlockSpec((None, 1, n_p), lambda b, h: (b, 0, 0)),
    ],
    out_specs=pl.BlockSpec((None, None, 1, hi - lo), lambda b, h: (b, h, 0, 0)),
    out_shape=jax.ShapeDtypeStruct((b, hkv, 1, hi - lo), jnp.float32),
    compiler_params=common.compiler_params(backend, dp, 2),
    interpret=interpret,
    name="selection_scores",
  )(q_rows, k, row_pos[:, :, None], row_w[:, :, None], k_pos[:, None, :])
  return per_head.sum(axis=(1, 2))[:, offset : offset + span_len]


def selection_scores(
  q: Float[Array, "B Q H K"],
  k: Float[Array, "B N Hkv K"],
  q_pos: Int[Array, "B Q"],
  k_pos: Int[Array, "B N"],
  q_valid: Bool[Array, "B Q"],
  k_valid: Bool[Array, "B N"],
  *,
  span_start: int,
  span_len: int,
  blocks: SelectionScoresBlocks | None = None,
  backend: str | None = None,
  interpret: bool | None = None,
) -> Float[Array, "B Nv"]:
  """Pallas scores; same result as `selection_scores_reference`.

  Memory is O(B · Hkv · span_len) beside the inputs; work is two passes of
  the G · Q rows of each key/value head over the keys (the second only over
  the span).

  Not differentiable on purpose: the inputs pass through
  `lax.stop_gradient`, so `jax.grad` through the scores returns zeros, like
  HiDrop's release, which scores detached hidden states (the top-k that
  follows has no gradient anyway).

  Args:
    q: [B, Q, H, K] query rows (RoPE applied).
    k: [B, N, Hkv, K] keys (RoPE applied); H % Hkv == 0.
    q_pos: [B, Q] integer position ids of the query rows.
    k_pos: [B, N] integer position ids of the keys; ids must lie strictly
      between int32's min and max (those mark padding internally).
    q_valid: [B, Q] bool, which query rows count in the mean.
    k_valid: [B, N] bool, False at padding.
    span_start, span_len: static; the scored key columns are
      span_start .. span_start + span_len - 1.
    blocks: tiles; None: `SelectionScoresBlocks.for_backend(backend)`.
      Checked against the backend's tiling rules (ValueError), shrunk when N
      is shorter than a tile; N is padded to a tile multiple and the span
      widened to whole tiles internally (the extra columns are dropped).
    backend: "gpu" (Triton), "tpu" (Mosaic) or None: the inputs' platform
      ("gpu" on CPU). See `kernels_pallas._common`.
    interpret: run the Pallas interpreter (TPU interpret mode for "tpu");
      None means "the inputs live on a CPU".

  Returns:
    [B, span_len] float32: mean over heads and valid query rows of the
    softmax probabilities; zeros for a row without valid queries.
  """
  backend, interpret = common.resolve("selection_scores", backend, interpret, q)
  blocks = blocks or SelectionScoresBlocks.for_backend(backend)
  blocks.check(backend)
  check_array = common.check_array
  check_array("q", q, (None,) * 4, "float")
  b, nq, h, d = q.shape
  check_array("k", k, (b, None, None, d), "float")
  n, hkv = k.shape[1], k.shape[2]
  if h % hkv:
    raise ValueError(
      f"query heads must be a multiple of key/value heads; got "
      f"q.shape={q.shape}, k.shape={k.shape}"
    )
  if q.dtype != k.dtype:
    raise ValueError(
      f"q and k must share a dtype; got q.dtype={q.dtype}, k.dtype={k.dtype}"
    )
  check_array("q_pos", q_pos, (b, nq), "int")
  check_array("k_pos", k_pos, (b, n), "int")
  check_array("q_valid", q_valid, (b, nq), "bool")
  check_array("k_valid", k_valid, (b, n), "bool")
  for name, value in (("span_start", span_start), ("span_len", span_len)):
    if isinstance(value, bool) or not isinstance(value, int):
      raise ValueError(f"{name} must be a Python int; got {name}={value!r}")
  if span_start < 0 or span_len < 1 or span_start + span_len > n:
    raise ValueError(
      f"the span must lie inside the N={n} keys; got "
      f"span_start={span_start}, span_len={span_len}"
    )
  q, k = lax.stop_gradient(q), lax.stop_gradient(k)
  return _scores(
    q,
    k,
    q_pos,
    k_pos,
    q_valid,
    k_valid,
    span_start=span_start,
    span_len=span_len,
    blocks=blocks.fit(backend, n),
    backend=backend,
    interpret=interpret,
  )
