import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas.selection_scores import (selection_scores,
                                             selection_scores_reference)
from tests.kernels_pallas.position_attention_test import (normal,
                                                          random_positions,
                                                          unchecked)

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}
# Jitted: one compile instead of one per op (most of an eager call's cost).
reference = jax.jit(selection_scores_reference,
                    static_argnames=("span_start", "span_len"))

# name: (B, Q, N, H, Hkv, K, span_start, span_len, block_k)
CASES = {
    "mha_one_row": (2, 1, 40, 2, 2, 16, 8, 24, 8),
    "gqa_rows": (2, 3, 37, 4, 2, 16, 5, 20, 16),
    "mqa_span_at_end": (1, 2, 30, 4, 1, 24, 23, 7, 8),
    "span_is_everything": (2, 4, 20, 2, 1, 16, 0, 20, 32),
}


def score_inputs(b, nq, n, h, hkv, d, dtype, seed=0):
  rng = np.random.default_rng(seed)
  q = normal(rng, (b, nq, h, d), dtype)
  k = normal(rng, (b, n, hkv, d), dtype)
  q_pos, k_pos, k_valid = random_positions(rng, b, nq, n)
  q_valid = rng.random((b, nq)) < 0.7
  q_valid[:, 0] = True
  return q, k, q_pos, k_pos, jnp.asarray(q_valid), k_valid


SCORES = [(case, jnp.float32) for case in CASES] + [
    ("gqa_rows", jnp.bfloat16), ("mqa_span_at_end", jnp.bfloat16)]


@pytest.mark.parametrize("case, dtype", SCORES,
                         ids=[f"{c}-{jnp.dtype(d).name}" for c, d in SCORES])
def test_matches_reference(case, dtype):
  b, nq, n, h, hkv, d, start, length, bk = CASES[case]
  args = score_inputs(b, nq, n, h, hkv, d, dtype)
  span = dict(span_start=start, span_len=length)
  out = selection_scores(*args, **span, block_k=bk, interpret=True)
  ref = reference(*args, **span)
  assert out.shape == (b, length) and out.dtype == jnp.float32
  np.testing.assert_allclose(out, ref, atol=TOL[dtype] * 0.1,
                             rtol=TOL[dtype])


def test_empty_rows_and_blind_queries():
  q, k, _, k_pos, _, k_valid = score_inputs(2, 3, 24, 2, 1, 16,
                                            jnp.float32, 1)
  q_pos = jnp.array([[2, 2, 100], [9, 30, 50]], jnp.int32)  # 2 see no key
  q_valid = jnp.array([[True] * 3, [False] * 3])  # row 1: no valid query
  args = (q, k, q_pos, k_pos, q_valid, k_valid)
  span = dict(span_start=4, span_len=16)
  out = selection_scores(*args, **span, block_k=8, interpret=True)
  np.testing.assert_allclose(out, reference(*args, **span),
                             atol=1e-6, rtol=1e-5)
  assert not np.asarray(out[1]).any()
  # The blind queries still count in the mean: one third of one query.
  one = selection_scores(q[:, 2:], k, q_pos[:, 2:], k_pos, q_valid[:, 2:],
                         k_valid, **span, block_k=8, interpret=True)
  np.testing.assert_allclose(out[0], one[0] / 3, atol=1e-6, rtol=1e-5)


def test_gradient_is_zero_by_design():
  args = score_inputs(1, 2, 20, 2, 1, 16, jnp.float32, 2)

  def total(q, k):
    return selection_scores(q, k, *args[2:], span_start=3, span_len=10,
                            block_k=8, interpret=True).sum()

  for grad in jax.grad(total, argnums=(0, 1))(*args[:2]):
    assert not np.asarray(grad).any()


def test_jit_and_vmap_with_default_interpret():
  args = score_inputs(2, 3, 37, 4, 2, 16, jnp.float32, 3)
  stacked = [jnp.stack([x, x[::-1]]) for x in args]  # [E, B, ...]
  span = dict(span_start=5, span_len=20)
  out = jax.jit(jax.vmap(functools.partial(selection_scores, **span,
                                           block_k=16)))(*stacked)
  for e in range(2):
    ref = reference(*(x[e] for x in stacked), **span)
    np.testing.assert_allclose(out[e], ref, atol=1e-6, rtol=1e-5)


def test_lowers_to_triton_for_gpu():
  """The GPU path passes Pallas' Triton lowering (no GPU compile here)."""
  args = score_inputs(2, 1, 40, 4, 4, 32, jnp.bfloat16)
  fn = functools.partial(selection_scores, span_start=8, span_len=24,
                         interpret=False)
  text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
  assert text.count("xla.gpu.triton") == 1


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
    ({"block_k": -8}, "block_k=-8"),
    ({"block_k": 8, "interpret": False}, "power of two >= 16"),
]


@pytest.mark.parametrize("change, match", BAD, ids=[m for _, m in BAD])
def test_bad_inputs_raise(change, match):
  args = dict(q=jnp.zeros((2, 3, 4, 16)), k=jnp.zeros((2, 10, 2, 16)),
              q_pos=jnp.zeros((2, 3), jnp.int32),
              k_pos=jnp.zeros((2, 10), jnp.int32),
              q_valid=jnp.ones((2, 3), bool), k_valid=jnp.ones((2, 10), bool),
              span_start=2, span_len=4, interpret=True)
  args.update(change)
  with pytest.raises(ValueError, match=match):
    unchecked(selection_scores)(**args)
