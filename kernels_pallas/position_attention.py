"""Attention with causality by persistent position id (HiDrop's buffer).

HiDrop (ICLR 2026, `hidrop_pallas.md` §2.2, §3.2) keeps every token's RoPE
position id from the unpruned sequence. After pruning, the buffer holds
[text | kept vision] in any order, and a query at position p attends to
every valid key whose position id is <= p. Buffer order therefore does not
matter, and one kernel serves prefill and training of the full model,
HiDrop, PyramidDrop and FastV.

`position_attention` is a flash-attention Pallas kernel (online softmax over
key blocks, float32 accumulators) with a Pallas backward (logsumexp
residuals, one dq kernel and one dk/dv kernel). On GPU it lowers through
Pallas' Triton backend: the kernels use only portable `pl` primitives (ref
slicing, `pl.ds`, `lax.fori_loop`, `lax.cond`, `jnp.dot`). On CPU they run
with `interpret=True`.

Axes: B batch, Tq queries, Tk keys, H query heads, Hkv key/value heads,
G = H / Hkv query heads per key/value head, K head dim.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton
from jaxtyping import Array, Bool, Float, Int

NEG_INF = float(jnp.finfo(jnp.float32).min)
# Padding and dropped keys get a position after every query, and padding query
# rows one before every key, so `k_pos <= q_pos` alone carries every mask.
# Real position ids must therefore lie strictly between the two.
NEVER_SEEN = int(np.iinfo(np.int32).max)
SEES_NOTHING = int(np.iinfo(np.int32).min)
# Triton needs power-of-two tiles, and at least 16 rows/columns for a dot.
MIN_GPU_BLOCK = 16


def default_interpret(interpret) -> bool:
  """`interpret`, or True when JAX's default backend is the CPU."""
  if interpret is None:
    return jax.default_backend() == "cpu"
  if not isinstance(interpret, bool):
    raise ValueError(f"interpret must be True, False or None; got "
                     f"{interpret=}")
  return interpret


def check_block(name: str, value, interpret: bool) -> None:
  """Raises unless `value` is a usable tile size (Triton's rules on GPU)."""
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be a positive int; got {name}={value!r}")
  if not interpret and (value < MIN_GPU_BLOCK or value & (value - 1)):
    raise ValueError(f"{name} must be a power of two >= {MIN_GPU_BLOCK} on "
                     f"GPU; got {name}={value}")


def check_array(name: str, x, shape: tuple, kind: str) -> None:
  """Raises unless `x` has `shape` (None matches any size) and dtype kind.

  `kind` is "float", "int" or "bool".
  """
  got = np.shape(x)
  if len(got) != len(shape) or any(
      want not in (None, size) for want, size in zip(shape, got)):
    want = tuple("*" if s is None else s for s in shape)
    raise ValueError(f"{name}.shape={got}; expected {want}")
  dtypes = {"float": jnp.floating, "int": jnp.integer, "bool": jnp.bool_}
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, dtypes[kind]):
    raise ValueError(f"{name}.dtype={dtype}; expected a {kind} dtype")


def fit_block(block: int, length: int) -> int:
  """`block`, shrunk for short sequences to a power of two >= 16."""
  return min(block, max(MIN_GPU_BLOCK, pl.next_power_of_2(length)))


def pad_axis(x, axis: int, size: int, value=0):
  """`x` padded with `value` at the end of `axis` up to `size`."""
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths, constant_values=value)


def round_up(n: int, block: int) -> int:
  return -(-n // block) * block


def compiler_params(head_dim: int) -> pltriton.CompilerParams:
  return pltriton.CompilerParams(num_warps=4 if head_dim <= 64 else 8,
                                 num_stages=2)


def dot_nt(a, b):
  """a @ b.T in float32: [M, K] x [N, K] -> [M, N]."""
  return lax.dot_general(a, b, (((1,), (1,)), ((), ())),
                         preferred_element_type=jnp.float32)


def _dot_tn(a, b):
  """a.T @ b in float32: [M, N] x [M, K] -> [N, K]."""
  return lax.dot_general(a, b, (((0,), (0,)), ((), ())),
                         preferred_element_type=jnp.float32)


def position_mask(q_pos: Int[Array, "B Tq"], k_pos: Int[Array, "B Tk"],
                  k_valid: Bool[Array, "B Tk"]) -> Bool[Array, "B Tq Tk"]:
  """[B, Tq, Tk] bool: key j is visible to query i (k_pos <= q_pos, valid)."""
  return (k_pos[:, None, :] <= q_pos[:, :, None]) & k_valid[:, None, :]


def position_attention_reference(
    q: Float[Array, "B Tq H K"], k: Float[Array, "B Tk Hkv K"],
    v: Float[Array, "B Tk Hkv K"], q_pos: Int[Array, "B Tq"],
    k_pos: Int[Array, "B Tk"], k_valid: Bool[Array, "B Tk"]
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
  logits = jnp.einsum("BTHGK,BSHK->BHGTS", qg, k,
                      preferred_element_type=jnp.float32) * d**-0.5
  mask = position_mask(q_pos, k_pos, k_valid)[:, None, None]
  logits = jnp.where(mask, logits, NEG_INF)
  probs = jax.nn.softmax(logits, axis=-1)
  probs = jnp.where(mask, probs, 0.0)
  out = jnp.einsum("BHGTS,BSHK->BTHGK", probs.astype(v.dtype), v,
                   preferred_element_type=jnp.float32)
  return out.reshape(b, tq, h, d).astype(q.dtype)


def _skip(_, carry):
  return carry


def _forward_kernel(q_ref, k_ref, v_ref, qpos_ref, kpos_ref, kmin_ref,
                    o_ref, lse_ref, *, scale: float, block_k: int):
  """One (query block, batch, head): FlashAttention-2's forward loop."""
  q = q_ref[...]  # [block_q, K]
  q_pos = qpos_ref[...]  # [block_q]
  q_last = jnp.max(q_pos)

  def visit(j, carry):
    acc, m, l = carry
    keys = pl.ds(j * block_k, block_k)
    mask = kpos_ref[keys][None, :] <= q_pos[:, None]  # [block_q, block_k]
    s = jnp.where(mask, dot_nt(q, k_ref[keys, :]) * scale, NEG_INF)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    # The `where` keeps rows that saw no key yet at exactly zero mass
    # (exp(NEG_INF - NEG_INF) would be 1).
    p = jnp.where(mask, jnp.exp(s - m_new[:, None]), 0.0)
    alpha = jnp.exp(m - m_new)
    v = v_ref[keys, :]
    acc = alpha[:, None] * acc + jnp.dot(p.astype(v.dtype), v,
                                         preferred_element_type=jnp.float32)
    return acc, m_new, alpha * l + jnp.sum(p, axis=1)

  def body(j, carry):  # skips key blocks that lie after every query
    return lax.cond(kmin_ref[j] <= q_last, visit, _skip, j, carry)

  block_q, d = q.shape
  init = (jnp.zeros((block_q, d), jnp.float32),
          jnp.full((block_q,), NEG_INF, jnp.float32),
          jnp.zeros((block_q,), jnp.float32))
  acc, m, l = lax.fori_loop(0, k_ref.shape[0] // block_k, body, init)
  seen = l > 0
  l = jnp.where(seen, l, 1.0)
  o_ref[...] = (acc / l[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(seen, m + jnp.log(l), 0.0)


def _dq_kernel(q_ref, k_ref, v_ref, qpos_ref, kpos_ref, kmin_ref, do_ref,
               lse_ref, delta_ref, dq_ref, *, scale: float, block_k: int):
  """One (query block, batch, head): dq = Σ_key-blocks dS K · scale."""
  q, do = q_ref[...], do_ref[...]  # [block_q, K]
  q_pos, lse, delta = qpos_ref[...], lse_ref[...], delta_ref[...]

  def visit(j, dq):
    keys = pl.ds(j * block_k, block_k)
    k, v = k_ref[keys, :], v_ref[keys, :]  # [block_k, K]
    mask = kpos_ref[keys][None, :] <= q_pos[:, None]
    p = jnp.where(mask, jnp.exp(dot_nt(q, k) * scale - lse[:, None]), 0.0)
    ds = p * (dot_nt(do, v) - delta[:, None])  # [block_q, block_k]
    return dq + jnp.dot(ds.astype(k.dtype), k,
                        preferred_element_type=jnp.float32)

  def body(j, dq):
    return lax.cond(kmin_ref[j] <= jnp.max(q_pos), visit, _skip, j, dq)

  dq = lax.fori_loop(0, k_ref.shape[0] // block_k, body,
                     jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, qpos_ref, kpos_ref, qmax_ref, do_ref,
                lse_ref, delta_ref, dk_ref, dv_ref, *, scale: float,
                block_q: int):
  """One (key block, batch, query head): dk, dv summed over query blocks."""
  k, v = k_ref[...], v_ref[...]  # [block_k, K]
  k_pos = kpos_ref[...]  # [block_k]

  def visit(i, carry):
    dk, dv = carry
    rows = pl.ds(i * block_q, block_q)
    q, do = q_ref[rows, :], do_ref[rows, :]  # [block_q, K]
    mask = k_pos[None, :] <= qpos_ref[rows][:, None]
    p = jnp.where(mask, jnp.exp(dot_nt(q, k) * scale
                                - lse_ref[rows][:, None]), 0.0)
    ds = p * (dot_nt(do, v) - delta_ref[rows][:, None])  # [block_q, block_k]
    return (dk + _dot_tn(ds.astype(q.dtype), q),
            dv + _dot_tn(p.astype(do.dtype), do))

  def body(i, carry):  # skips query blocks that lie before every key
    return lax.cond(jnp.min(k_pos) <= qmax_ref[i], visit, _skip, i, carry)

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = lax.fori_loop(0, q_ref.shape[0] // block_q, body, (zeros, zeros))
  dk_ref[...] = dk * scale
  dv_ref[...] = dv


def _pad_inputs(q, k, v, q_pos, k_pos, k_valid, block_q, block_k):
  """Pads T to block multiples and K to a power of two; folds the masks.

  Returns q, k, v, q_pos, k_pos with sentinel positions, kmin [B, nk] (first
  visible position of each key block) and qmax [B, nq] (last query position
  of each query block).
  """
  d = pl.next_power_of_2(q.shape[3])
  tq, tk = round_up(q.shape[1], block_q), round_up(k.shape[1], block_k)
  q, k, v = (pad_axis(pad_axis(x, 3, d), 1, t)
             for x, t in ((q, tq), (k, tk), (v, tk)))
  q_pos = pad_axis(q_pos.astype(jnp.int32), 1, tq, SEES_NOTHING)
  k_pos = pad_axis(jnp.where(k_valid, k_pos.astype(jnp.int32), NEVER_SEEN),
                   1, tk, NEVER_SEEN)
  kmin = k_pos.reshape(k_pos.shape[0], -1, block_k).min(axis=2)  # [B, nk]
  qmax = q_pos.reshape(q_pos.shape[0], -1, block_q).max(axis=2)  # [B, nq]
  return q, k, v, q_pos, k_pos, kmin, qmax


@functools.partial(jax.jit,
                   static_argnames=("block_q", "block_k", "interpret"))
def _forward(q, k, v, q_pos, k_pos, k_valid, *, block_q, block_k, interpret):
  """Returns out [B, Tq, H, K] and lse [B, H, Tq padded] (natural log)."""
  b, tq, h, d = q.shape
  g = h // k.shape[2]
  qp, kp, vp, q_pos, k_pos, kmin, _ = _pad_inputs(
      q, k, v, q_pos, k_pos, k_valid, block_q, block_k)
  tq_p, tk_p, dp = qp.shape[1], kp.shape[1], qp.shape[3]
  rows = pl.BlockSpec((None, block_q, None, dp), lambda i, b, h: (b, i, h, 0))
  keys = pl.BlockSpec((None, tk_p, None, dp), lambda i, b, h: (b, 0, h // g, 0))
  out, lse = pl.pallas_call(
      functools.partial(_forward_kernel, scale=d**-0.5, block_k=block_k),
      grid=(tq_p // block_q, b, h),
      in_specs=[rows, keys, keys,
                pl.BlockSpec((None, block_q), lambda i, b, h: (b, i)),
                pl.BlockSpec((None, tk_p), lambda i, b, h: (b, 0)),
                pl.BlockSpec((None, kmin.shape[1]), lambda i, b, h: (b, 0))],
      out_specs=[rows,
                 pl.BlockSpec((None, None, block_q),
                              lambda i, b, h: (b, h, i))],
      out_shape=[jax.ShapeDtypeStruct(qp.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, h, tq_p), jnp.float32)],
      compiler_params=compiler_params(dp), interpret=interpret,
      name="position_attention_fwd",
  )(qp, kp, vp, q_pos, k_pos, kmin)
  return out[:, :tq, :, :d], lse


@functools.partial(jax.jit,
                   static_argnames=("block_q", "block_k", "interpret"))
def _backward(q, k, v, q_pos, k_pos, k_valid, out, lse, dout, *, block_q,
              block_k, interpret):
  """Returns dq, dk, dv in the dtypes and shapes of q, k, v."""
  b, tq, h, d = q.shape
  tk, hkv = k.shape[1], k.shape[2]
  g = h // hkv
  delta = jnp.einsum("BTHK,BTHK->BHT", out.astype(jnp.float32),
                     dout.astype(jnp.float32))  # [B, H, Tq]
  qp, kp, vp, q_pos, k_pos, kmin, qmax = _pad_inputs(
      q, k, v, q_pos, k_pos, k_valid, block_q, block_k)
  tq_p, tk_p, dp = qp.shape[1], kp.shape[1], qp.shape[3]
  dop = pad_axis(pad_axis(dout, 3, dp), 1, tq_p)
  delta = pad_axis(delta, 2, tq_p)
  params = dict(compiler_params=compiler_params(dp), interpret=interpret)

  def spec(shape, index):  # shape with None = squeezed axis
    return pl.BlockSpec(shape, index)

  q_blk = spec((None, block_q, None, dp), lambda i, b, h: (b, i, h, 0))
  k_all = spec((None, tk_p, None, dp), lambda i, b, h: (b, 0, h // g, 0))
  row_blk = spec((None, None, block_q), lambda i, b, h: (b, h, i))
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, scale=d**-0.5, block_k=block_k),
      grid=(tq_p // block_q, b, h),
      in_specs=[q_blk, k_all, k_all,
                spec((None, block_q), lambda i, b, h: (b, i)),
                spec((None, tk_p), lambda i, b, h: (b, 0)),
                spec((None, kmin.shape[1]), lambda i, b, h: (b, 0)),
                q_blk, row_blk, row_blk],
      out_specs=q_blk, out_shape=jax.ShapeDtypeStruct(qp.shape, q.dtype),
      name="position_attention_dq", **params,
  )(qp, kp, vp, q_pos, k_pos, kmin, dop, lse, delta)

  q_all = spec((None, tq_p, None, dp), lambda j, b, h: (b, 0, h, 0))
  k_blk = spec((None, block_k, None, dp), lambda j, b, h: (b, j, h // g, 0))
  row_all = spec((None, None, tq_p), lambda j, b, h: (b, h, 0))
  # One dk/dv per query head; the G heads of a group are summed below.
  dkv_blk = spec((None, block_k, None, dp), lambda j, b, h: (b, j, h, 0))
  dkv_shape = jax.ShapeDtypeStruct((b, tk_p, h, dp), jnp.float32)
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, scale=d**-0.5, block_q=block_q),
      grid=(tk_p // block_k, b, h),
      in_specs=[q_all, k_blk, k_blk,
                spec((None, tq_p), lambda j, b, h: (b, 0)),
                spec((None, block_k), lambda j, b, h: (b, j)),
                spec((None, qmax.shape[1]), lambda j, b, h: (b, 0)),
                q_all, row_all, row_all],
      out_specs=[dkv_blk, dkv_blk], out_shape=[dkv_shape, dkv_shape],
      name="position_attention_dkv", **params,
  )(qp, kp, vp, q_pos, k_pos, qmax, dop, lse, delta)

  def per_group(x, like):  # [B, Tk_p, H, Kp] -> [B, Tk, Hkv, K]
    x = x[:, :tk, :, :d].reshape(b, tk, hkv, g, d).sum(axis=3)
    return x.astype(like.dtype)

  return dq[:, :tq, :, :d], per_group(dk, k), per_group(dv, v)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _attention(q, k, v, q_pos, k_pos, k_valid, block_q, block_k, interpret):
  return _forward(q, k, v, q_pos, k_pos, k_valid, block_q=block_q,
                  block_k=block_k, interpret=interpret)[0]


def _attention_fwd(q, k, v, q_pos, k_pos, k_valid, block_q, block_k,
                   interpret):
  out, lse = _forward(q, k, v, q_pos, k_pos, k_valid, block_q=block_q,
                      block_k=block_k, interpret=interpret)
  return out, (q, k, v, q_pos, k_pos, k_valid, out, lse)


def _attention_bwd(block_q, block_k, interpret, residuals, dout):
  dq, dk, dv = _backward(*residuals, dout, block_q=block_q, block_k=block_k,
                         interpret=interpret)
  return dq, dk, dv, None, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def position_attention(
    q: Float[Array, "B Tq H K"], k: Float[Array, "B Tk Hkv K"],
    v: Float[Array, "B Tk Hkv K"], q_pos: Int[Array, "B Tq"],
    k_pos: Int[Array, "B Tk"], k_valid: Bool[Array, "B Tk"], *,
    block_q: int = 128, block_k: int = 128, interpret: bool | None = None
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
    block_q, block_k: tile sizes (powers of two >= 16 on GPU); shrunk for
      short sequences, and Tq, Tk are padded to their multiples internally.
    interpret: run the Pallas interpreter; None means "on CPU".

  Returns:
    [B, Tq, H, K] in q.dtype; a query that sees no key gets zeros.
  """
  interpret = default_interpret(interpret)
  check_block("block_q", block_q, interpret)
  check_block("block_k", block_k, interpret)
  check_array("q", q, (None,) * 4, "float")
  b, tq, h, d = q.shape
  check_array("k", k, (b, None, None, d), "float")
  tk, hkv = k.shape[1], k.shape[2]
  check_array("v", v, k.shape, "float")
  if h % hkv:
    raise ValueError(f"query heads must be a multiple of key/value heads; got "
                     f"q.shape={q.shape}, k.shape={k.shape}")
  if not q.dtype == k.dtype == v.dtype:
    raise ValueError(f"q, k, v must share a dtype; got q.dtype={q.dtype}, "
                     f"k.dtype={k.dtype}, v.dtype={v.dtype}")
  check_array("q_pos", q_pos, (b, tq), "int")
  check_array("k_pos", k_pos, (b, tk), "int")
  check_array("k_valid", k_valid, (b, tk), "bool")
  return _attention(q, k, v, q_pos, k_pos, k_valid, fit_block(block_q, tq),
                    fit_block(block_k, tk), interpret)
