"""position_attention against its reference, on both lowerings.

On CPU the GPU (Triton) lowering runs in Pallas' plain interpreter over the
whole shape/dtype grid; the TPU (Mosaic) lowering runs in TPU interpret mode
(a memory simulator, much slower) over a smaller grid that still has several
query and key blocks. Both are cross-lowered for their real platform.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas import _common as common
from kernels_pallas.position_attention import (
  PositionAttentionBlocks,
  _attention,
  position_attention,
  position_attention_reference,
)
from tests.tiers import fast_only, slow

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}
# Jitted: one compile instead of one per op (most of an eager call's cost).
reference = jax.jit(position_attention_reference)
# The smallest legal tiles of each lowering: many blocks at tiny shapes.
BLOCKS = {
  "gpu": PositionAttentionBlocks(block_q=16, block_k=16),
  "tpu": PositionAttentionBlocks(block_q=8, block_k=128),
}


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
  k_valid[-1, -(tk // 4) :] = False  # right padding
  return (
    jnp.asarray(q_pos, jnp.int32),
    jnp.asarray(k_pos, jnp.int32),
    jnp.asarray(k_valid),
  )


def normal(rng: np.random.Generator, shape, dtype):
  return jnp.asarray(rng.standard_normal(shape, np.float32), dtype)


def attention_inputs(b, tq, tk, h, hkv, d, dtype, seed=0):
  rng = np.random.default_rng(seed)
  q = normal(rng, (b, tq, h, d), dtype)
  k = normal(rng, (b, tk, hkv, d), dtype)
  v = normal(rng, (b, tk, hkv, d), dtype)
  return (q, k, v) + random_positions(rng, b, tq, tk)


# name: (B, Tq, Tk, H, Hkv, K)
CASES = {
  "mha_square": (2, 32, 32, 2, 2, 16),
  "gqa_ragged": (2, 29, 45, 4, 2, 16),
  "mqa_few_queries": (1, 5, 40, 4, 1, 32),
  "head_dim_24": (2, 9, 17, 2, 1, 24),
  "long_keys": (1, 20, 150, 2, 1, 16),  # two 128-key tiles on TPU
}
F32, BF16 = jnp.float32, jnp.bfloat16
FORWARD = [("gpu", case, F32) for case in CASES] + [
  ("gpu", "gqa_ragged", BF16),
  ("gpu", "head_dim_24", BF16),
  ("tpu", "gqa_ragged", F32),
  ("tpu", "head_dim_24", BF16),
]
# TPU interpret mode is slow: one case with GQA, several query blocks and
# two key tiles (plus the in-order test below, which skips blocks).
GRADIENTS = [("gpu", case) for case in CASES] + [("tpu", "long_keys")]


def kernel(backend, blocks=None):
  return functools.partial(
    position_attention,
    blocks=blocks or BLOCKS[backend],
    backend=backend,
    interpret=True,
  )


def ids(params):
  return ["-".join(getattr(x, "__name__", str(x)) for x in p) for p in params]


# The fast tier: the GQA case on each lowering (forward), on the GPU one
# (gradients); the whole grid runs in the heavy tier.
@pytest.mark.parametrize(
  "backend, case, dtype",
  fast_only(FORWARD, ("gpu", "gqa_ragged", F32), ("tpu", "gqa_ragged", F32)),
  ids=ids(FORWARD),
)
def test_forward_matches_reference(backend, case, dtype):
  b, tq, tk, h, hkv, d = CASES[case]
  args = attention_inputs(b, tq, tk, h, hkv, d, dtype)
  out = jax.jit(kernel(backend))(*args)
  ref = reference(*args)
  assert out.shape == (b, tq, h, d) and out.dtype == dtype
  np.testing.assert_allclose(
    np.asarray(out, np.float32),
    np.asarray(ref, np.float32),
    atol=TOL[dtype],
    rtol=TOL[dtype],
  )
  assert not np.asarray(out[0, 0]).any()  # the query that sees no key


def loss(fn, *rest):
  weights = jnp.cos(jnp.arange(64.0))  # a non-uniform cotangent

  def f(q, k, v):
    out = fn(q, k, v, *rest).astype(jnp.float32)
    return jnp.sum(out * weights[None, None, None, : out.shape[-1]])

  return f


def grads_of(fn, q, k, v, *rest):
  return jax.jit(jax.grad(loss(fn, *rest), argnums=(0, 1, 2)))(q, k, v)


@pytest.mark.parametrize(
  "backend, case",
  fast_only(GRADIENTS, ("gpu", "gqa_ragged")),
  ids=ids(GRADIENTS),
)
def test_gradients_match_reference(backend, case):
  b, tq, tk, h, hkv, d = CASES[case]
  args = attention_inputs(b, tq, tk, h, hkv, d, jnp.float32, 1)
  grads = grads_of(kernel(backend), *args)
  refs = grads_of(position_attention_reference, *args)
  for name, got, want in zip("qkv", grads, refs):
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5, err_msg=name)
  assert not np.asarray(grads[0][0, 0]).any()


@slow
def test_bfloat16_gradients_match_reference():
  args = attention_inputs(2, 29, 45, 4, 2, 16, jnp.bfloat16, 2)
  grads = grads_of(kernel("gpu"), *args)
  refs = grads_of(position_attention_reference, *args)
  for name, got, want in zip("qkv", grads, refs):
    assert got.dtype == jnp.bfloat16, name
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, atol=3e-2 * scale, err_msg=name)


def test_buffer_order_does_not_matter():
  q, k, v, q_pos, k_pos, k_valid = attention_inputs(
    2, 8, 40, 2, 2, 16, jnp.float32, 3
  )
  perm = np.random.default_rng(4).permutation(40)
  attend = jax.jit(kernel("gpu"))
  out = attend(q, k, v, q_pos, k_pos, k_valid)
  shuffled = attend(
    q, k[:, perm], v[:, perm], q_pos, k_pos[:, perm], k_valid[:, perm]
  )
  np.testing.assert_allclose(out, shuffled, atol=1e-5, rtol=1e-5)


@slow
@pytest.mark.parametrize(
  "backend, t, blocks",
  [
    ("gpu", 64, BLOCKS["gpu"]),
    ("tpu", 256, PositionAttentionBlocks(block_q=128, block_k=128)),
  ],
)
def test_in_order_buffer_skips_blocks_and_is_causal(backend, t, blocks):
  # Sorted positions: key blocks after a query block are skipped, and the
  # result is plain causal attention (forward and gradients).
  q, k, v, *_ = attention_inputs(1, t, t, 1, 1, 16, jnp.float32, 5)
  pos = jnp.arange(t, dtype=jnp.int32)[None]
  rest = (pos, pos, jnp.ones((1, t), bool))
  causal = functools.partial(jax.nn.dot_product_attention, is_causal=True)
  out = jax.jit(kernel(backend, blocks))(q, k, v, *rest)
  np.testing.assert_allclose(
    out, jax.jit(causal)(q, k, v), atol=1e-5, rtol=1e-5
  )
  grads = grads_of(kernel(backend, blocks), q, k, v, *rest)
  refs = grads_of(lambda q, k, v, *_: causal(q, k, v), q, k, v, *rest)
  for name, got, want in zip("qkv", grads, refs):
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5, err_msg=name)


def test_jit_and_vmap_with_default_backend_and_interpret():
  args = attention_inputs(2, 13, 29, 4, 2, 16, jnp.float32, 6)
  stacked = [jnp.stack([x, x[::-1]]) for x in args]  # [E, B, ...]
  # backend=None and interpret=None pick the GPU lowering's interpreter on
  # this CPU; blocks=None its default tiles.
  out = jax.jit(jax.vmap(position_attention))(*stacked)
  for e in range(2):
    ref = reference(*(x[e] for x in stacked))
    np.testing.assert_allclose(out[e], ref, atol=1e-5, rtol=1e-5)


def lowered_text(backend, blocks):
  """StableHLO of a gradient step cross-lowered for `backend`'s platform."""
  q, k, v, q_pos, k_pos, k_valid = attention_inputs(
    1, 20, 200, 4, 2, 24, jnp.bfloat16
  )

  def step(q, k, v):
    return jax.grad(
      lambda q, k, v: (
        _attention(q, k, v, q_pos, k_pos, k_valid, blocks, backend, False)
        .astype(jnp.float32)
        .sum()
      ),
      argnums=(0, 1, 2),
    )(q, k, v)

  platform = {"gpu": "cuda", "tpu": "tpu"}[backend]
  with common.lowering_target(backend):
    return (
      jax.jit(step)
      .trace(q, k, v)
      .lower(lowering_platforms=(platform,))
      .as_text()
    )


def test_lowers_to_triton_for_gpu():
  """The GPU path passes Pallas' Triton lowering (no GPU compile here)."""
  text = lowered_text("gpu", PositionAttentionBlocks(block_q=16, block_k=32))
  assert text.count("xla.gpu.triton") == 3  # forward, dq, dk/dv


def test_lowers_to_mosaic_for_tpu():
  """The TPU path passes Pallas' Mosaic lowering and its block checks."""
  text = lowered_text("tpu", PositionAttentionBlocks(block_q=8, block_k=128))
  assert text.count("tpu_custom_call") == 3


def test_mosaic_rejects_the_tiles_that_check_rejects():
  """The TPU rule in `check` is Mosaic's own: lowering fails without it."""
  blocks = PositionAttentionBlocks(block_q=8, block_k=64)
  with pytest.raises(ValueError, match="block_k=64 breaks the TPU"):
    blocks.check("tpu")
  with pytest.raises(ValueError, match="divisible by 8 and 128"):
    lowered_text("tpu", blocks)


def test_blocks_per_backend_and_their_rules():
  assert PositionAttentionBlocks.for_backend("gpu") == PositionAttentionBlocks(
    block_q=64, block_k=64
  )
  assert PositionAttentionBlocks.for_backend("tpu") == PositionAttentionBlocks(
    block_q=128, block_k=128
  )
  for backend in common.BACKENDS:
    PositionAttentionBlocks.for_backend(backend).check(backend)
  bad = [
    ("gpu", dict(block_q=24), "block_q=24 breaks the GPU.*powers of two"),
    ("gpu", dict(block_k=8), "block_k=8 breaks the GPU.*>= 16"),
    ("tpu", dict(block_q=12), "block_q=12 breaks the TPU.*multiple of 8"),
    ("tpu", dict(block_k=64), "block_k=64 breaks the TPU.*of 128"),
  ]
  for backend, change, match in bad:
    with pytest.raises(ValueError, match=match):
      PositionAttentionBlocks(**change).check(backend)
  with pytest.raises(ValueError, match="backend must be one of"):
    PositionAttentionBlocks.for_backend("cpu")


def test_blocks_fit_short_sequences_with_legal_tiles():
  blocks = PositionAttentionBlocks(block_q=128, block_k=128)
  assert blocks.fit("gpu", 1, 40) == PositionAttentionBlocks(
    block_q=16, block_k=64
  )
  assert blocks.fit("gpu", 700, 700) == blocks
  assert blocks.fit("tpu", 13, 29) == PositionAttentionBlocks(
    block_q=16, block_k=128
  )


def test_cpu_without_interpreter_names_the_lowerings():
  args = attention_inputs(1, 4, 8, 2, 2, 16, jnp.float32)
  with pytest.raises(
    ValueError,
    match=r"no lowering for platform 'cpu'.*"
    r"'gpu' \(Triton\), 'tpu' \(Mosaic TPU\)",
  ):
    unchecked(position_attention)(*args, interpret=False)


BAD = [
  ({"q": jnp.zeros((2, 4, 4, 16))[..., None]}, "q.shape"),
  ({"k": jnp.zeros((2, 6, 2, 8))}, "k.shape"),
  ({"v": jnp.zeros((2, 5, 2, 16))}, "v.shape"),
  (
    {"k": jnp.zeros((2, 6, 3, 16)), "v": jnp.zeros((2, 6, 3, 16))},
    "multiple of key/value heads",
  ),
  ({"v": jnp.zeros((2, 6, 2, 16), jnp.bfloat16)}, "v.dtype=bfloat16"),
  ({"q": jnp.zeros((2, 4, 4, 16), jnp.int32)}, "q.dtype=int32"),
  ({"q_pos": jnp.zeros((2, 5), jnp.int32)}, r"q_pos.shape=\(2, 5\)"),
  ({"k_pos": jnp.zeros((2, 6), jnp.float32)}, "k_pos.dtype=float32"),
  ({"k_valid": jnp.ones((2, 6), jnp.int32)}, "k_valid.dtype=int32"),
  ({"blocks": PositionAttentionBlocks(block_k=24)}, "power"),
  (
    {"blocks": PositionAttentionBlocks(block_k=16), "backend": "tpu"},
    "multiple of 128",
  ),
  ({"backend": "cuda"}, "backend='cuda'"),
  ({"interpret": "yes"}, "interpret='yes'"),
]


@pytest.mark.parametrize("change, match", BAD, ids=[m for _, m in BAD])
def test_bad_inputs_raise(change, match):
  args = dict(
    q=jnp.zeros((2, 4, 4, 16)),
    k=jnp.zeros((2, 6, 2, 16)),
    v=jnp.zeros((2, 6, 2, 16)),
    q_pos=jnp.zeros((2, 4), jnp.int32),
    k_pos=jnp.zeros((2, 6), jnp.int32),
    k_valid=jnp.ones((2, 6), bool),
    interpret=True,
  )
  args.update(change)
  with pytest.raises(ValueError, match=match):
    unchecked(position_attention)(**args)


@pytest.mark.parametrize(
  "change, match",
  [
    (dict(block_q=0), "block_q must be a positive int.*block_q=0"),
    (dict(block_k=-8), "block_k=-8"),
    (dict(block_q=True), "block_q=True"),
  ],
)
def test_blocks_reject_non_positive_ints(change, match):
  with pytest.raises(ValueError, match=match):
    PositionAttentionBlocks(**change)
  # Non-ints stop at the test hook's type check; without it, here:
  with pytest.raises(ValueError, match="block_k=8.0"):
    common.check_positive("PositionAttentionBlocks", "block_k", 8.0)
