# Over 400 lines: one kernel with its reference, block sizes, both lowerings
# and its VJP, as Pallas ops keep them (kernel + reference + tuning).
"""Attention with causality by persistent position id (HiDrop's buffer).

HiDrop (ICLR 2026, `hidrop_pallas.md` §2.2, §3.2) keeps every token's RoPE
position id from the unpruned sequence. After pruning, the buffer holds
[text | kept vision] in any order, and a query at position p attends to
every valid key whose position id is <= p. Buffer order therefore does not
matter, and one kernel serves prefill and training of the full model,
HiDrop, PyramidDrop and FastV.

`position_attention` is a flash-attention Pallas kernel (FlashAttention-2:
online softmax over key blocks, float32 accumulators) with a Pallas
backward (logsumexp residuals, one dq kernel and one dk/dv kernel). The
kernel bodies use only portable `pl` primitives (ref slicing, `pl.ds`,
`lax.fori_loop`, `lax.cond`, `lax.dot_general`) and serve two lowerings
(`kernels_pallas._common` picks one by backend):

* GPU: Pallas' Triton backend, [B, T, H, K] blocks, grid (blocks, B, H).
  Triton rather than Mosaic GPU, although Pallas deprecated its Triton
  backend in JAX 0.11.0 (Pallas changelog: "will be removed in a future
  version ... migrate to the Mosaic GPU backend"; jax 0.12.1 warns when it
  lowers). Triton is still the right target for this range: jax 0.12.1
  ships and lowers it, and it lowers these bodies on every supported jax
  (0.10.2-0.12) and GPU (Ampere, Hopper). Mosaic GPU has no `dot_general`
  lowering (0.10.2 or 0.12.1): its matmuls are `plgpu.wgmma` (Hopper),
  `plgpu.tcgen05_mma` (Blackwell) or `plgpu.mma` (Ampere, jax >= 0.11) on
  shared-memory refs with swizzled layouts, i.e. a separate kernel per
  architecture, and only jax >= 0.12 has a CPU interpreter for it
  (`plgpu.InterpretGPUParams`). The port is the next step once a GPU can
  check it and the Triton backend is gone from a supported jax.
* TPU: Mosaic, [B, H, T, K] blocks (q, k, v are transposed to head-major
  before the call: a squeezed head axis may not sit in a block's last two
  dimensions), grid (B, H, blocks) so that K/V stay in VMEM across query
  blocks, block-skipping bounds in SMEM.

Padding (explicit): Tq, Tk are padded up to block multiples (padding keys
never seen, padding queries see nothing) and the head dim is zero-padded to
a power of two (GPU) or 128 (TPU); zero columns change no dot product.

Axes: B batch, Tq queries, Tk keys, H query heads, Hkv key/value heads,
G = H / Hkv query heads per key/value head, K head dim.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jaxtyping import Array, Bool, Float, Int

from kernels_pallas import _common as common
from kernels_pallas._common import NEG_INF, dot_nt, dot_tn


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class PositionAttentionBlocks:
  """Tiles of `position_attention` (forward and backward).

  Attributes:
    block_q: query rows per tile; GPU: a power of two >= 16, TPU: a
      multiple of 8 (a sublane dimension).
    block_k: keys per tile; GPU: a power of two >= 16, TPU: a multiple of
      128 (the lane dimension of the key-position row and score tiles).
  """

  block_q: int = 128
  block_k: int = 128

  def __post_init__(self):
    for name in ("block_q", "block_k"):
      common.check_positive(type(self).__name__, name, getattr(self, name))

  @classmethod
  def for_backend(cls, backend: str) -> "PositionAttentionBlocks":
    """Default tiles: 64/64 on GPU (Triton, K=128 fits registers), 128/128
    on TPU (one MXU pass)."""
    if backend not in common.BACKENDS:
      raise ValueError(
        f"backend must be one of {common.BACKENDS}; got {backend=}"
      )
    return cls(block_q=64, block_k=64) if backend == "gpu" else cls()

  def check(self, backend: str) -> None:
    """Raises ValueError naming the rule if a tile breaks `backend`'s."""
    owner = type(self).__name__
    common.check_tile(
      owner, "block_q", self.block_q, backend, common.TPU_SUBLANES
    )
    common.check_tile(owner, "block_k", self.block_k, backend, common.TPU_LANES)

  def fit(self, backend: str, tq: int, tk: int) -> "PositionAttentionBlocks":
    """The tiles used for Tq queries and Tk keys (shrunk if longer)."""
    return PositionAttentionBlocks(
      block_q=common.fit_block(self.block_q, tq, backend, common.TPU_SUBLANES),
      block_k=common.fit_block(self.block_k, tk, backend, common.TPU_LANES),
    )


def position_attention_reference(
  q: Float[Array, "B Tq H K"],
  k: Float[Array, "B Tk Hkv K"],
  v: Float[Array, "B Tk Hkv K"],
  q_pos: Int[Array, "B Tq"],
  k_pos: Int[Array, "B Tk"],
  k_valid: Bool[Array, "B Tk"],
) -> Float[Array, "B Tq H K"]:
  """Plain XLA attention: the reference of `position_attention`.

  Args:
    q: [B, Tq, H, K] queries (RoPE already applied).
    k: [B, Tk, Hkv, K] keys (RoPE already applied).
    v: [B, Tk, Hkv, K] values.
    q_pos: [B, Tq] int32 position ids of the queries.
    k_pos: [B, Tk] int32 position ids of the keys.
    k_valid: [B, Tk] bool, False at padding / dropped keys.

  Returns:
    [B, Tq, H, K] in q.dtype; scores and softmax in float32; a query that
    sees no key gets zeros.
  """
  b, tq, h, d = q.shape
  hkv = k.shape[2]
  qg = q.reshape(b, tq, hkv, h // hkv, d)
  logits = (
    jnp.einsum("BTHGK,BSHK->BHGTS", qg, k, preferred_element_type=jnp.float32)
    * d**-0.5
  )
  mask = common.position_mask(q_pos, k_pos, k_valid)[:, None, None]
  logits = jnp.where(mask, logits, NEG_INF)
  probs = jax.nn.softmax(logits, axis=-1)
  probs = jnp.where(mask, probs, 0.0)
  out = jnp.einsum(
    "BHGTS,BSHK->BTHGK",
    probs.astype(v.dtype),
    v,
    preferred_element_type=jnp.float32,
  )
  return out.reshape(b, tq, h, d).astype(q.dtype)


def _skip(_, carry):
  return carry


def _tile(j, block):
  return pl.ds(pl.multiple_of(j * block, block), block)


def _forward_kernel(
  q_ref,
  k_ref,
  v_ref,
  qpos_ref,
  kpos_ref,
  kmin_ref,
  qmax_ref,
  o_ref,
  lse_ref,
  *,
  scale,
  block_k,
  axes,
):
  """One (batch, head, query block): FlashAttention-2's forward loop."""
  b, i = pl.program_id(axes[0]), pl.program_id(axes[1])
  q = q_ref[...]  # [block_q, K]
  q_pos = qpos_ref[...]  # [block_q, 1]
  q_last = qmax_ref[b, i]

  def visit(j, carry):
    acc, m, l = carry
    keys = _tile(j, block_k)
    mask = kpos_ref[:, keys] <= q_pos  # [block_q, block_k]
    s = jnp.where(mask, dot_nt(q, k_ref[keys, :]) * scale, NEG_INF)
    m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))  # [block_q, 1]
    # The `where` keeps rows that saw no key yet at exactly zero mass
    # (exp(NEG_INF - NEG_INF) would be 1).
    p = jnp.where(mask, jnp.exp(s - m_new), 0.0)
    alpha = jnp.exp(m - m_new)
    v = v_ref[keys, :]
    acc = alpha * acc + jnp.dot(
      p.astype(v.dtype), v, preferred_element_type=jnp.float32
    )
    return acc, m_new, alpha * l + jnp.sum(p, axis=1, keepdims=True)

  def body(j, carry):  # skips key blocks that lie after every query
    return lax.cond(kmin_ref[b, j] <= q_last, visit, _skip, j, carry)

  block_q, d = q.shape
  init = (
    jnp.zeros((block_q, d), jnp.float32),
    jnp.full((block_q, 1), NEG_INF, jnp.float32),
    jnp.zeros((block_q, 1), jnp.float32),
  )
  acc, m, l = lax.fori_loop(0, k_ref.shape[0] // block_k, body, init)
  seen = l > 0
  l = jnp.where(seen, l, 1.0)
  o_ref[...] = (acc / l).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(seen, m + jnp.log(l), 0.0)


def _dq_kernel(
  q_ref,
  k_ref,
  v_ref,
  qpos_ref,
  kpos_ref,
  kmin_ref,
  qmax_ref,
  do_ref,
  lse_ref,
  delta_ref,
  dq_ref,
  *,
  scale,
  block_k,
  axes,
):
  """One (batch, head, query block): dq = Σ_key-blocks dS K · scale."""
  b, i = pl.program_id(axes[0]), pl.program_id(axes[1])
  q, do = q_ref[...], do_ref[...]  # [block_q, K]
  q_pos, lse, delta = qpos_ref[...], lse_ref[...], delta_ref[...]  # [bq, 1]

  def visit(j, dq):
    keys = _tile(j, block_k)
    k, v = k_ref[keys, :], v_ref[keys, :]  # [block_k, K]
    mask = kpos_ref[:, keys] <= q_pos
    p = jnp.where(mask, jnp.exp(dot_nt(q, k) * scale - lse), 0.0)
    ds = p * (dot_nt(do, v) - delta)  # [block_q, block_k]
    return dq + jnp.dot(
      ds.astype(k.dtype), k, preferred_element_type=jnp.float32
    )

  def body(j, dq):
    return lax.cond(kmin_ref[b, j] <= qmax_ref[b, i], visit, _skip, j, dq)

  dq = lax.fori_loop(
    0, k_ref.shape[0] // block_k, body, jnp.zeros(q.shape, jnp.float32)
  )
  dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkv_kernel(
  q_ref,
  k_ref,
  v_ref,
  qpos_ref,
  kpos_ref,
  kmin_ref,
  qmax_ref,
  do_ref,
  lse_ref,
  delta_ref,
  dk_ref,
  dv_ref,
  *,
  scale,
  block_q,
  axes,
):
  """One (batch, query head, key block): dk, dv summed over query blocks."""
  b, j = pl.program_id(axes[0]), pl.program_id(axes[1])
  k, v = k_ref[...], v_ref[...]  # [block_k, K]
  k_pos = kpos_ref[...]  # [1, block_k]
  k_first = kmin_ref[b, j]

  def visit(i, carry):
    dk, dv = carry
    rows = _tile(i, block_q)
    q, do = q_ref[rows, :], do_ref[rows, :]  # [block_q, K]
    mask = k_pos <= qpos_ref[rows, :]  # [block_q, block_k]
    p = jnp.where(mask, jnp.exp(dot_nt(q, k) * scale - lse_ref[rows, :]), 0.0)
    ds = p * (dot_nt(do, v) - delta_ref[rows, :])  # [block_q, block_k]
    return (
      dk + dot_tn(ds.astype(q.dtype), q),
      dv + dot_tn(p.astype(do.dtype), do),
    )

  def body(i, carry):  # skips query blocks that lie before every key
    return lax.cond(k_first <= qmax_ref[b, i], visit, _skip, i, carry)

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = lax.fori_loop(0, q_ref.shape[0] // block_q, body, (zeros, zeros))
  dk_ref[...] = dk * scale
  dv_ref[...] = dv


class _Layout:
  """Block specs of one backend over (batch, head, block) grid indices.

  GPU arrays are [B, T, H, K] and the grid is (blocks, B, H); TPU arrays
  are [B, H, T, K] and the grid is (B, H, blocks).
  """

  def __init__(self, backend: str):
    self.backend = backend
    self.tpu = backend == "tpu"
    # (batch, block) positions in the grid, for pl.program_id.
    self.axes = (0, 2) if self.tpu else (1, 0)

  def grid(self, b, h, n):
    return (b, h, n) if self.tpu else (n, b, h)

  def spec(self, shape, index):
    """BlockSpec with index(b, h, i) taking canonical grid indices."""
    if self.tpu:
      return pl.BlockSpec(shape, lambda b, h, i: index(b, h, i))
    return pl.BlockSpec(shape, lambda i, b, h: index(b, h, i))

  def heads(self, t, dp, head=lambda h: h, block=lambda i: i):
    """Spec of a [B, T, H, K] (GPU) / [B, H, T, K] (TPU) operand."""
    if self.tpu:
      return self.spec(
        (None, None, t, dp), lambda b, h, i: (b, head(h), block(i), 0)
      )
    return self.spec(
      (None, t, None, dp), lambda b, h, i: (b, block(i), head(h), 0)
    )

  def shape(self, b, t, h, d):
    return (b, h, t, d) if self.tpu else (b, t, h, d)

  def to(self, x):
    """[B, T, H, K] -> the layout, and back (the swap is an involution)."""
    return x.transpose(0, 2, 1, 3) if self.tpu else x


def _prepare(q, k, v, q_pos, k_pos, k_valid, blocks, layout):
  """Pads, folds the masks into positions, transposes to the layout.

  Returns q, k, v (layout, padded), q_pos [B, Tq_p, 1], k_pos [B, 1, Tk_p]
  with sentinel positions, kmin [B, nk] (first visible position of each key
  block) and qmax [B, nq] (last query position of each query block).
  """
  dp = common.padded_head_dim(q.shape[3], layout.backend)
  tq = common.round_up(q.shape[1], blocks.block_q)
  tk = common.round_up(k.shape[1], blocks.block_k)
  q, k, v = (
    layout.to(common.pad_axis(common.pad_axis(x, 3, dp), 1, t))
    for x, t in ((q, tq), (k, tk), (v, tk))
  )
  q_pos = common.pad_axis(q_pos.astype(jnp.int32), 1, tq, common.SEES_NOTHING)
  k_pos = common.pad_axis(
    jnp.where(k_valid, k_pos.astype(jnp.int32), common.NEVER_SEEN),
    1,
    tk,
    common.NEVER_SEEN,
  )
  bsz = q_pos.shape[0]
  kmin = k_pos.reshape(bsz, -1, blocks.block_k).min(axis=2)  # [B, nk]
  qmax = q_pos.reshape(bsz, -1, blocks.block_q).max(axis=2)  # [B, nq]
  return q, k, v, q_pos[:, :, None], k_pos[:, None, :], kmin, qmax


@functools.partial(jax.jit, static_argnames=("blocks", "backend", "interpret"))
def _forward(q, k, v, q_pos, k_pos, k_valid, *, blocks, backend, interpret):
  """Returns out [B, Tq, H, K] and lse [B, H, Tq_p, 1] (natural log)."""
  b, tq, h, d = q.shape
  g = h // k.shape[2]
  lay = _Layout(backend)
  qp, kp, vp, q_pos, k_pos, kmin, qmax = _prepare(
    q, k, v, q_pos, k_pos, k_valid, blocks, lay
  )
  tq_p, tk_p, dp = q_pos.shape[1], k_pos.shape[2], qp.shape[3]
  bq = blocks.block_q
  rows = lay.heads(bq, dp)
  keys = lay.heads(tk_p, dp, head=lambda h: h // g, block=lambda i: 0)
  out, lse = pl.pallas_call(
    functools.partial(
      _forward_kernel, scale=d**-0.5, block_k=blocks.block_k, axes=lay.axes
    ),
    grid=lay.grid(b, h, tq_p // bq),
    in_specs=[
      rows,
      keys,
      keys,
      lay.spec((None, bq, 1), lambda b, h, i: (b, i, 0)),
      lay.spec((None, 1, tk_p), lambda b, h, i: (b, 0, 0)),
      common.scalar_table_spec(backend, kmin.shape),
      common.scalar_table_spec(backend, qmax.shape),
    ],
    out_specs=[
      rows,
      lay.spec((None, None, bq, 1), lambda b, h, i: (b, h, i, 0)),
    ],
    out_shape=[
      jax.ShapeDtypeStruct(qp.shape, q.dtype),
      jax.ShapeDtypeStruct((b, h, tq_p, 1), jnp.float32),
    ],
    compiler_params=common.compiler_params(backend, dp, 3),
    interpret=interpret,
    name="position_attention_fwd",
  )(qp, kp, vp, q_pos, k_pos, kmin, qmax)
  return lay.to(out)[:, :tq, :, :d], lse


@functools.partial(jax.jit, static_argnames=("blocks", "backend", "interpret"))
def _backward(
  q, k, v, q_pos, k_pos, k_valid, out, lse, dout, *, blocks, backend, interpret
):
  """Returns dq, dk, dv in the dtypes and shapes of q, k, v."""
  b, tq, h, d = q.shape
  tk, hkv = k.shape[1], k.shape[2]
  g = h // hkv
  lay = _Layout(backend)
  delta = jnp.einsum(
    "BTHK,BTHK->BHT", out.astype(jnp.float32), dout.astype(jnp.float32)
  )  # [B, H, Tq]
  qp, kp, vp, q_pos, k_pos, kmin, qmax = _prepare(
    q, k, v, q_pos, k_pos, k_valid, blocks, lay
  )
  tq_p, tk_p, dp = q_pos.shape[1], k_pos.shape[2], qp.shape[3]
  dop = lay.to(common.pad_axis(common.pad_axis(dout, 3, dp), 1, tq_p))
  delta = common.pad_axis(delta, 2, tq_p)[..., None]  # [B, H, Tq_p, 1]
  bq, bk = blocks.block_q, blocks.block_k
  tables = [
    common.scalar_table_spec(backend, kmin.shape),
    common.scalar_table_spec(backend, qmax.shape),
  ]
  params = dict(
    compiler_params=common.compiler_params(backend, dp, 3), interpret=interpret
  )

  q_blk = lay.heads(bq, dp)
  k_all = lay.heads(tk_p, dp, head=lambda h: h // g, block=lambda i: 0)
  stat_blk = lay.spec((None, None, bq, 1), lambda b, h, i: (b, h, i, 0))
  dq = pl.pallas_call(
    functools.partial(_dq_kernel, scale=d**-0.5, block_k=bk, axes=lay.axes),
    grid=lay.grid(b, h, tq_p // bq),
    in_specs=[
      q_blk,
      k_all,
      k_all,
      lay.spec((None, bq, 1), lambda b, h, i: (b, i, 0)),
      lay.spec((None, 1, tk_p), lambda b, h, i: (b, 0, 0)),
      *tables,
      q_blk,
      stat_blk,
      stat_blk,
    ],
    out_specs=q_blk,
    out_shape=jax.ShapeDtypeStruct(qp.shape, q.dtype),
    name="position_attention_dq",
    **params,
  )(qp, kp, vp, q_pos, k_pos, kmin, qmax, dop, lse, delta)

  q_all = lay.heads(tq_p, dp, block=lambda i: 0)
  k_blk = lay.heads(bk, dp, head=lambda h: h // g)
  stat_all = lay.spec((None, None, tq_p, 1), lambda b, h, i: (b, h, 0, 0))
  # One dk/dv per query head; the G heads of a group are summed below.
  dkv_blk = lay.heads(bk, dp)
  dkv_shape = jax.ShapeDtypeStruct(lay.shape(b, tk_p, h, dp), jnp.float32)
  dk, dv = pl.pallas_call(
    functools.partial(_dkv_kernel, scale=d**-0.5, block_q=bq, axes=lay.axes),
    grid=lay.grid(b, h, tk_p // bk),
    in_specs=[
      q_all,
      k_blk,
      k_blk,
      lay.spec((None, tq_p, 1), lambda b, h, i: (b, 0, 0)),
      lay.spec((None, 1, bk), lambda b, h, i: (b, 0, i)),
      *tables,
      q_all,
      stat_all,
      stat_all,
    ],
    out_specs=[dkv_blk, dkv_blk],
    out_shape=[dkv_shape, dkv_shape],
    name="position_attention_dkv",
    **params,
  )(qp, kp, vp, q_pos, k_pos, kmin, qmax, dop, lse, delta)

  def per_group(x, like):  # layout [.., Tk_p, .., Kp] -> [B, Tk, Hkv, K]
    x = lay.to(x)[:, :tk, :, :d].reshape(b, tk, hkv, g, d).sum(axis=3)
    return x.astype(like.dtype)

  return lay.to(dq)[:, :tq, :, :d], per_group(dk, k), per_group(dv, v)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _attention(q, k, v, q_pos, k_pos, k_valid, blocks, backend, interpret):
  return _forward(
    q,
    k,
    v,
    q_pos,
    k_pos,
    k_valid,
    blocks=blocks,
    backend=backend,
    interpret=interpret,
  )[0]


def _attention_fwd(q, k, v, q_pos, k_pos, k_valid, blocks, backend, interpret):
  out, lse = _forward(
    q,
    k,
    v,
    q_pos,
    k_pos,
    k_valid,
    blocks=blocks,
    backend=backend,
    interpret=interpret,
  )
  return out, (q, k, v, q_pos, k_pos, k_valid, out, lse)


def _attention_bwd(blocks, backend, interpret, residuals, dout):
  dq, dk, dv = _backward(
    *residuals, dout, blocks=blocks, backend=backend, interpret=interpret
  )
  return dq, dk, dv, None, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def position_attention(
  q: Float[Array, "B Tq H K"],
  k: Float[Array, "B Tk Hkv K"],
  v: Float[Array, "B Tk Hkv K"],
  q_pos: Int[Array, "B Tq"],
  k_pos: Int[Array, "B Tk"],
  k_valid: Bool[Array, "B Tk"],
  *,
  blocks: PositionAttentionBlocks | None = None,
  backend: str | None = None,
  interpret: bool | None = None,
) -> Float[Array, "B Tq H K"]:
  """Flash attention masked by position id; Pallas forward and backward.

  Same result as `position_attention_reference` without the [B, H, Tq, Tk]
  score map; differentiable in q, k, v through a `jax.custom_vjp` whose
  backward recomputes the probabilities from saved logsumexps. Key blocks
  whose first visible position lies after every query of a query block are
  skipped (both directions), which pays off when the buffer is roughly in
  position order.

  Args:
    q: [B, Tq, H, K] queries (RoPE already applied).
    k: [B, Tk, Hkv, K] keys (RoPE already applied); H % Hkv == 0.
    v: [B, Tk, Hkv, K] values.
    q_pos: [B, Tq] integer position ids of the queries.
    k_pos: [B, Tk] integer position ids of the keys; ids must lie strictly
      between int32's min and max (those mark padding internally).
    k_valid: [B, Tk] bool, False at padding / dropped keys.
    blocks: tiles; None: `PositionAttentionBlocks.for_backend(backend)`.
      Checked against the backend's tiling rules (ValueError), shrunk for
      sequences shorter than a tile; Tq, Tk are padded to their multiples.
    backend: "gpu" (Triton), "tpu" (Mosaic) or None: the inputs' platform
      ("gpu" on CPU). See `kernels_pallas._common`.
    interpret: run the Pallas interpreter (TPU interpret mode for "tpu");
      None means "the inputs live on a CPU".

  Returns:
    [B, Tq, H, K] in q.dtype; a query that sees no key gets zeros.
  """
  backend, interpret = common.resolve(
    "position_attention", backend, interpret, q
  )
  blocks = blocks or PositionAttentionBlocks.for_backend(backend)
  blocks.check(backend)
  common.check_array("q", q, (None,) * 4, "float")
  b, tq, h, d = q.shape
  common.check_array("k", k, (b, None, None, d), "float")
  tk, hkv = k.shape[1], k.shape[2]
  common.check_array("v", v, k.shape, "float")
  if h % hkv:
    raise ValueError(
      f"query heads must be a multiple of key/value heads; got "
      f"q.shape={q.shape}, k.shape={k.shape}"
    )
  if not q.dtype == k.dtype == v.dtype:
    raise ValueError(
      f"q, k, v must share a dtype; got q.dtype={q.dtype}, "
      f"k.dtype={k.dtype}, v.dtype={v.dtype}"
    )
  common.check_array("q_pos", q_pos, (b, tq), "int")
  common.check_array("k_pos", k_pos, (b, tk), "int")
  common.check_array("k_valid", k_valid, (b, tk), "bool")
  return _attention(
    q,
    k,
    v,
    q_pos,
    k_pos,
    k_valid,
    blocks.fit(backend, tq, tk),
    backend,
    interpret,
  )
