"""selection_scores against its reference, on both lowerings (see
position_attention_test for the interpreters)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas import _common as common
from kernels_pallas.selection_scores import (
  SelectionScoresBlocks,
  selection_scores,
  selection_scores_reference,
)
from tests.kernels_pallas.position_attention_test import (
  ids,
  normal,
  random_positions,
  unchecked,
)
from tests.tiers import fast_only

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}
# Jitted: one compile instead of one per op (most of an eager call's cost).
reference = jax.jit(
  selection_scores_reference, static_argnames=("span_start", "span_len")
)
BLOCKS = {
  "gpu": SelectionScoresBlocks(block_k=16),
  "tpu": SelectionScoresBlocks(block_k=128),
}

# name: (B, Q, N, H, Hkv, K, span_start, span_len)
CASES = {
  "mha_one_row": (2, 1, 40, 2, 2, 16, 8, 24),
  "gqa_rows": (2, 3, 37, 4, 2, 16, 5, 20),
  "mqa_span_at_end": (1, 2, 30, 4, 1, 24, 18, 12),  # ends in padding
  "span_is_everything": (2, 4, 20, 2, 1, 16, 0, 20),
  # Span starts and ends inside 128-key tiles: unaligned on TPU too.
  "long_unaligned_span": (2, 3, 300, 2, 1, 16, 100, 150),
}


def score_inputs(b, nq, n, h, hkv, d, dtype, seed=0):
  rng = np.random.default_rng(seed)
  q = normal(rng, (b, nq, h, d), dtype)
  k = normal(rng, (b, n, hkv, d), dtype)
  q_pos, k_pos, k_valid = random_positions(rng, b, nq, n)
  q_valid = rng.random((b, nq)) < 0.7
  q_valid[:, -1] = True  # row 0 of batch 0 sees no key (random_positions)
  return q, k, q_pos, k_pos, jnp.asarray(q_valid), k_valid


def scores(backend, **span):
  return jax.jit(
    functools.partial(
      selection_scores,
      **span,
      blocks=BLOCKS[backend],
      backend=backend,
      interpret=True,
    )
  )


F32, BF16 = jnp.float32, jnp.bfloat16
SCORES = [("gpu", case, F32) for case in CASES] + [
  ("gpu", "gqa_rows", BF16),
  ("gpu", "mqa_span_at_end", BF16),
  ("tpu", "gqa_rows", F32),
  ("tpu", "long_unaligned_span", F32),
  ("tpu", "mqa_span_at_end", BF16),
]


# The fast tier: one case with GQA rows on each lowering; the whole grid
# runs in the heavy tier.
@pytest.mark.parametrize(
  "backend, case, dtype",
  fast_only(SCORES, ("gpu", "gqa_rows", F32), ("tpu", "gqa_rows", F32)),
  ids=ids(SCORES),
)
def test_matches_reference(backend, case, dtype):
  b, nq, n, h, hkv, d, start, length = CASES[case]
  args = score_inputs(b, nq, n, h, hkv, d, dtype)
  span = dict(span_start=start, span_len=length)
  out = scores(backend, **span)(*args)
  ref = reference(*args, **span)
  assert out.shape == (b, length) and out.dtype == jnp.float32
  assert np.abs(np.asarray(ref)).max() > 0  # the case scores something
  np.testing.assert_allclose(out, ref, atol=TOL[dtype] * 0.1, rtol=TOL[dtype])


def test_empty_rows_and_blind_queries():
  q, k, _, k_pos, _, k_valid = score_inputs(2, 3, 24, 2, 1, 16, jnp.float32, 1)
  q_pos = jnp.array([[2, 2, 100], [9, 30, 50]], jnp.int32)  # 2 see no key
  q_valid = jnp.array([[True] * 3, [False] * 3])  # row 1: no valid query
  args = (q, k, q_pos, k_pos, q_valid, k_valid)
  span = dict(span_start=4, span_len=16)
  out = scores("gpu", **span)(*args)
  np.testing.assert_allclose(
    out, reference(*args, **span), atol=1e-6, rtol=1e-5
  )
  assert not np.asarray(out[1]).any()
  # The blind queries still count in the mean: one third of one query.
  one = scores("gpu", **span)(
    q[:, 2:], k, q_pos[:, 2:], k_pos, q_valid[:, 2:], k_valid
  )
  np.testing.assert_allclose(out[0], one[0] / 3, atol=1e-6, rtol=1e-5)


def test_gradient_is_zero_by_design():
  args = score_inputs(1, 2, 20, 2, 1, 16, jnp.float32, 2)

  def total(q, k):
    return selection_scores(
      q, k, *args[2:], span_start=3, span_len=10, interpret=True
    ).sum()

  for grad in jax.grad(total, argnums=(0, 1))(*args[:2]):
    assert not np.asarray(grad).any()


def test_jit_and_vmap_with_default_backend_and_interpret():
  args = score_inputs(2, 3, 37, 4, 2, 16, jnp.float32, 3)
  stacked = [jnp.stack([x, x[::-1]]) for x in args]  # [E, B, ...]
  span = dict(span_start=5, span_len=20)
  out = jax.jit(jax.vmap(functools.partial(selection_scores, **span)))(*stacked)
  for e in range(2):
    ref = reference(*(x[e] for x in stacked), **span)
    np.testing.assert_allclose(out[e], ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
  "backend, platform, marker",
  [("gpu", "cuda", "xla.gpu.triton"), ("tpu", "tpu", "tpu_custom_call")],
)
def test_lowers_for_its_platform(backend, platform, marker):
  """Triton / Mosaic lowering (and Mosaic's block checks), no compile."""
  args = score_inputs(2, 1, 300, 4, 4, 32, jnp.bfloat16)
  fn = functools.partial(
    selection_scores,
    span_start=100,
    span_len=150,
    backend=backend,
    interpret=False,
  )
  with common.lowering_target(backend):
    text = (
      jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()
    )
  assert text.count(marker) == 1


def test_blocks_per_backend_and_their_rules():
  assert SelectionScoresBlocks.for_backend("gpu").block_k == 64
  assert SelectionScoresBlocks.for_backend("tpu").block_k == 128
  with pytest.raises(ValueError, match="block_k=48 breaks the GPU"):
    SelectionScoresBlocks(block_k=48).check("gpu")
  with pytest.raises(ValueError, match="block_k=64 breaks the TPU.*of 128"):
    SelectionScoresBlocks(block_k=64).check("tpu")
  assert SelectionScoresBlocks().fit("gpu", 20).block_k == 32
  assert SelectionScoresBlocks(block_k=256).fit("tpu", 200).block_k == 256
  assert SelectionScoresBlocks(block_k=512).fit("tpu", 200).block_k == 256


BAD = [
  ({"q": jnp.zeros((2, 3, 4))}, "q.shape"),
  ({"k": jnp.zeros((2, 10, 2, 8))}, "k.shape"),
  ({"k": jnp.zeros((2, 10, 3, 16))}, "multiple of key/value heads"),
  ({"k": jnp.zeros((2, 10, 2, 16), jnp.bfloat16)}, "k.dtype=bfloat16"),
  ({"q_pos": jnp.zeros((2, 3), jnp.float32)}, "q_pos.dtype=float32"),
  ({"k_pos": jnp.zeros((2, 9), jnp.int32)}, r"k_pos.shape=\(2, 9\)"),
  ({"q_valid": jnp.ones((1, 3), bool)}, "q_valid.shape"),
  ({"k_valid": jnp.ones((2, 10), jnp.int32)}, "k_valid.dtype=int32"),
  ({"span_start": 6, "span_len": 5}, "span_start=6, span_len=5"),
  ({"span_start": -1}, "span_start=-1"),
  ({"span_len": 0}, "span_len=0"),
  ({"span_len": 2.0}, "span_len=2.0"),
  ({"blocks": SelectionScoresBlocks(block_k=8)}, "power of two|>= 16"),
  (
    {"backend": "tpu", "blocks": SelectionScoresBlocks(block_k=64)},
    "multiple of 128",
  ),
  ({"interpret": False}, "no lowering for platform 'cpu'"),
]


@pytest.mark.parametrize("change, match", BAD, ids=[m for _, m in BAD])
def test_bad_inputs_raise(change, match):
  args = dict(
    q=jnp.zeros((2, 3, 4, 16)),
    k=jnp.zeros((2, 10, 2, 16)),
    q_pos=jnp.zeros((2, 3), jnp.int32),
    k_pos=jnp.zeros((2, 10), jnp.int32),
    q_valid=jnp.ones((2, 3), bool),
    k_valid=jnp.ones((2, 10), bool),
    span_start=2,
    span_len=4,
    interpret=True,
  )
  args.update(change)
  with pytest.raises(ValueError, match=match):
    unchecked(selection_scores)(**args)
