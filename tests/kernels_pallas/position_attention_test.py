import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas.position_attention import (fit_block, position_attention,
                                               position_attention_reference)

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}
# Jitted: one compile instead of one per op (most of an eager call's cost).
reference = jax.jit(position_attention_reference)


def unchecked(fn):
  """`fn` minus the test hook's jaxtyping wrapper, to reach its ValueErrors."""
  return getattr(fn, "__wrapped__", fn)


def random_positions(rng: np.random.Generator, b: int, tq: int, tk: int):
  """Shuffled key ids with gaps, padded keys, a query that sees nothing.

  Inputs are drawn with NumPy: eager jax.random ops would each compile.

  Returns q_pos [B, Tq], k_pos [B, Tk] int32 and k_valid [B, Tk] bool.
  """
  k_pos = np.stack([rng.permutation(3 + 2 * np.arange(tk)) for _ in range(b)])
  q_pos = rng.integers(0, 2 * tk + 6, (b, tq))
  q_pos[0, 0] = 2  # before every key
  k_valid = rng.random((b, tk)) < 0.8
  k_valid[-1, -(tk // 4):] = False  # right padding
  return (jnp.asarray(q_pos, jnp.int32), jnp.asarray(k_pos, jnp.int32),
          jnp.asarray(k_valid))


def normal(rng: np.random.Generator, shape, dtype):
  return jnp.asarray(rng.standard_normal(shape, np.float32), dtype)


def attention_inputs(b, tq, tk, h, hkv, d, dtype, seed=0):
  rng = np.random.default_rng(seed)
  q = normal(rng, (b, tq, h, d), dtype)
  k = normal(rng, (b, tk, hkv, d), dtype)
  v = normal(rng, (b, tk, hkv, d), dtype)
  return (q, k, v) + random_positions(rng, b, tq, tk)


# name: (B, Tq, Tk, H, Hkv, K, block_q, block_k)
CASES = {
    "mha_square": (2, 16, 16, 2, 2, 16, 8, 8),
    "gqa_ragged": (2, 13, 29, 4, 2, 16, 8, 16),
    "mqa_few_queries": (1, 5, 40, 4, 1, 32, 16, 8),
    "head_dim_24": (2, 9, 17, 2, 1, 24, 8, 8),
}


def kernel(block_q, block_k):
  return lambda *a: position_attention(*a, block_q=block_q, block_k=block_k,
                                       interpret=True)


FORWARD = [(case, jnp.float32) for case in CASES] + [
    ("gqa_ragged", jnp.bfloat16), ("head_dim_24", jnp.bfloat16)]


@pytest.mark.parametrize("case, dtype", FORWARD,
                         ids=[f"{c}-{jnp.dtype(d).name}" for c, d in FORWARD])
def test_forward_matches_reference(case, dtype):
  b, tq, tk, h, hkv, d, bq, bk = CASES[case]
  args = attention_inputs(b, tq, tk, h, hkv, d, dtype)
  out = kernel(bq, bk)(*args)
  ref = reference(*args)
  assert out.shape == (b, tq, h, d) and out.dtype == dtype
  np.testing.assert_allclose(np.asarray(out, np.float32),
                             np.asarray(ref, np.float32),
                             atol=TOL[dtype], rtol=TOL[dtype])
  assert not np.asarray(out[0, 0]).any()  # the query that sees no key


def loss(fn, *rest):
  weights = jnp.cos(jnp.arange(64.0))  # a non-uniform cotangent

  def f(q, k, v):
    out = fn(q, k, v, *rest).astype(jnp.float32)
    return jnp.sum(out * weights[None, None, None, :out.shape[-1]])
  return f


@pytest.mark.parametrize("case", CASES)
def test_gradients_match_reference(case):
  b, tq, tk, h, hkv, d, bq, bk = CASES[case]
  q, k, v, *rest = attention_inputs(b, tq, tk, h, hkv, d, jnp.float32, 1)
  grads = jax.jit(jax.grad(loss(kernel(bq, bk), *rest),
                           argnums=(0, 1, 2)))(q, k, v)
  refs = jax.jit(jax.grad(loss(position_attention_reference, *rest),
                          argnums=(0, 1, 2)))(q, k, v)
  for name, got, want in zip("qkv", grads, refs):
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5, err_msg=name)
  assert not np.asarray(grads[0][0, 0]).any()


def test_bfloat16_gradients_match_reference():
  q, k, v, *rest = attention_inputs(2, 13, 29, 4, 2, 16, jnp.bfloat16, 2)
  grads = jax.jit(jax.grad(loss(kernel(8, 16), *rest),
                           argnums=(0, 1, 2)))(q, k, v)
  refs = jax.jit(jax.grad(loss(position_attention_reference, *rest),
                          argnums=(0, 1, 2)))(q, k, v)
  for name, got, want in zip("qkv", grads, refs):
    assert got.dtype == jnp.bfloat16, name
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, atol=3e-2 * scale, err_msg=name)


def test_buffer_order_does_not_matter():
  q, k, v, q_pos, k_pos, k_valid = attention_inputs(2, 8, 24, 2, 2, 16,
                                                    jnp.float32, 3)
  perm = np.random.default_rng(4).permutation(24)
  out = kernel(8, 8)(q, k, v, q_pos, k_pos, k_valid)
  shuffled = kernel(8, 8)(q, k[:, perm], v[:, perm], q_pos, k_pos[:, perm],
                          k_valid[:, perm])
  np.testing.assert_allclose(out, shuffled, atol=1e-5, rtol=1e-5)


def test_in_order_buffer_skips_blocks_and_is_causal():
  # Sorted positions: key blocks after a query block are skipped, and the
  # result is plain causal attention.
  q, k, v, *_ = attention_inputs(1, 32, 32, 2, 2, 16, jnp.float32, 5)
  pos = jnp.arange(32, dtype=jnp.int32)[None]
  valid = jnp.ones((1, 32), bool)
  out = kernel(8, 8)(q, k, v, pos, pos, valid)
  causal = jax.jit(jax.nn.dot_product_attention,
                   static_argnames="is_causal")(q, k, v, is_causal=True)
  np.testing.assert_allclose(out, causal, atol=1e-5, rtol=1e-5)


def test_jit_and_vmap_with_default_interpret():
  args = attention_inputs(2, 13, 29, 4, 2, 16, jnp.float32, 6)
  stacked = [jnp.stack([x, x[::-1]]) for x in args]  # [E, B, ...]
  # interpret=None picks the interpreter on this CPU.
  out = jax.jit(jax.vmap(functools.partial(position_attention, block_q=8,
                                           block_k=16)))(*stacked)
  for e in range(2):
    ref = reference(*(x[e] for x in stacked))
    np.testing.assert_allclose(out[e], ref, atol=1e-5, rtol=1e-5)



def test_lowers_to_triton_for_gpu():
  """The GPU path passes Pallas' Triton lowering (no GPU compile here)."""
  q, k, v, q_pos, k_pos, k_valid = attention_inputs(1, 20, 40, 4, 2, 24,
                                                    jnp.bfloat16)

  def step(q, k, v):
    return jax.grad(lambda q, k, v: position_attention(
        q, k, v, q_pos, k_pos, k_valid, block_q=16, block_k=32,
        interpret=False).astype(jnp.float32).sum(), argnums=(0, 1, 2))(q, k, v)

  text = jax.jit(step).trace(q, k, v).lower(
      lowering_platforms=("cuda",)).as_text()
  assert text.count("xla.gpu.triton") == 3  # forward, dq, dk/dv


BAD = [
    ({"q": jnp.zeros((2, 4, 4, 16))[..., None]}, "q.shape"),
    ({"k": jnp.zeros((2, 6, 2, 8))}, "k.shape"),
    ({"v": jnp.zeros((2, 5, 2, 16))}, "v.shape"),
    ({"k": jnp.zeros((2, 6, 3, 16)), "v": jnp.zeros((2, 6, 3, 16))},
     "multiple of key/value heads"),
    ({"v": jnp.zeros((2, 6, 2, 16), jnp.bfloat16)}, "v.dtype=bfloat16"),
    ({"q": jnp.zeros((2, 4, 4, 16), jnp.int32)}, "q.dtype=int32"),
    ({"q_pos": jnp.zeros((2, 5), jnp.int32)}, r"q_pos.shape=\(2, 5\)"),
    ({"k_pos": jnp.zeros((2, 6), jnp.float32)}, "k_pos.dtype=float32"),
    ({"k_valid": jnp.ones((2, 6), jnp.int32)}, "k_valid.dtype=int32"),
    ({"block_q": 0}, "block_q=0"),
    ({"block_k": 8.0}, "block_k=8.0"),
    ({"block_k": 24, "interpret": False}, "power of two"),
    ({"interpret": "yes"}, "interpret='yes'"),
]


@pytest.mark.parametrize("change, match", BAD, ids=[m for _, m in BAD])
def test_bad_inputs_raise(change, match):
  args = dict(q=jnp.zeros((2, 4, 4, 16)), k=jnp.zeros((2, 6, 2, 16)),
              v=jnp.zeros((2, 6, 2, 16)), q_pos=jnp.zeros((2, 4), jnp.int32),
              k_pos=jnp.zeros((2, 6), jnp.int32),
              k_valid=jnp.ones((2, 6), bool), interpret=True)
  args.update(change)
  with pytest.raises(ValueError, match=match):
    unchecked(position_attention)(**args)


def test_fit_block_shrinks_for_short_sequences():
  assert fit_block(128, 1) == 16
  assert fit_block(128, 40) == 64
  assert fit_block(128, 700) == 128
  assert fit_block(8, 3) == 8
