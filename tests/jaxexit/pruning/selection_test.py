"""Selection: static top-k, soft masks, importance scores vs a dense map."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxexit.pruning import (
  importance_scores,
  soft_topk_mask,
  straight_through_topk_mask,
  topk_indices,
)
from tests.jaxexit.pruning.tiny import dense_scores, make_case, tiny_lm
from tests.tiers import slow


def test_topk_ties_go_to_lower_index_and_sorted():
  scores = jnp.array(
    [
      [0.1, 0.5, 0.5, 0.2, 0.5, 0.5],
      [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
      [0.9, 0.1, 0.8, 0.3, 0.7, 0.2],
    ]
  )
  idx = topk_indices(scores, 3)
  assert idx.dtype == jnp.int32
  np.testing.assert_array_equal(idx, [[1, 2, 4], [0, 1, 2], [0, 2, 4]])


def test_topk_random_rows_match_argsort():
  scores = jax.random.normal(jax.random.key(0), (4, 20))
  idx = np.asarray(topk_indices(scores, 7))
  want = np.sort(np.argsort(-np.asarray(scores), axis=1)[:, :7], axis=1)
  np.testing.assert_array_equal(idx, want)
  assert (np.diff(idx, axis=1) > 0).all()


@pytest.mark.parametrize("k", [1, 5, 19, 20])
def test_soft_mask_thresholds_to_hard_topk(k):
  scores = jax.random.normal(jax.random.key(k), (3, 20))
  m = soft_topk_mask(scores, k)
  hard = np.zeros((3, 20), bool)
  np.put_along_axis(hard, np.asarray(topk_indices(scores, k)), True, 1)
  np.testing.assert_array_equal(np.asarray(m) > 0.5, hard)
  assert ((m > 0) & (m <= 1)).all()


def test_soft_mask_formula():
  scores = jnp.array([[3.0, 1.0, 2.0, 0.0]])
  # c' = (4, 2, 3, 1) / 4, a = 1 - 2/4; m = sigmoid(λ·4·(c' - a)).
  want = jax.nn.sigmoid(2.0 * 4 * (jnp.array([1, 0.5, 0.75, 0.25]) - 0.5))
  np.testing.assert_allclose(
    soft_topk_mask(scores, 2, lam=2.0)[0], want, rtol=1e-6
  )


def test_straight_through_forward_and_gradient():
  scores = jax.random.normal(jax.random.key(1), (2, 12))
  np.testing.assert_array_equal(
    straight_through_topk_mask(scores, 4), soft_topk_mask(scores, 4)
  )
  grad_soft = jax.grad(lambda s: soft_topk_mask(s, 4).sum())(scores)
  grad_st = jax.grad(lambda s: straight_through_topk_mask(s, 4).sum())(scores)
  assert not np.asarray(grad_soft).any()  # the hard rank is a step
  assert np.isfinite(grad_st).all() and np.abs(grad_st).max() > 1e-4


def test_bad_k():
  with pytest.raises(ValueError, match="k=5 exceeds the 4 scored tokens"):
    topk_indices(jnp.zeros((1, 4)), 5)
  with pytest.raises(ValueError, match="k must be an integer >= 1"):
    soft_topk_mask(jnp.zeros((1, 4)), 0)


@slow
@pytest.mark.parametrize("num_queries,pad", [(1, (0, 0)), (2, (0, 3))])
def test_importance_scores_match_dense_attention(num_queries, pad):
  lm = tiny_lm(num_layers=2)
  case = make_case(num_queries=num_queries, pad=pad)
  x = case.inputs
  # Buffer [text | vision] in the two-stream layout.
  h = jnp.concatenate([x.text_emb, x.vision_emb], axis=1)
  pos = jnp.concatenate([x.text_pos, x.vision_pos], axis=1)
  valid = jnp.concatenate(
    [x.text_valid, jnp.ones_like(x.vision_pos, bool)], axis=1
  )
  t, nv = x.text_pos.shape[1], x.vision_pos.shape[1]
  got = importance_scores(
    lm.layers[1],
    h,
    pos,
    valid,
    x.query_index,
    x.query_valid,
    span_start=t,
    span_len=nv,
    inv_freq=lm._inv_freq(),
  )
  # The same tokens in sequence order, scored from the full attention map.
  merged_rows = jnp.asarray(case.text_rows)[x.query_index]
  want = dense_scores(
    lm, 1, case.merged_h, case.merged_pos, case.merged_valid, merged_rows
  )[:, case.vision_rows]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert got.shape == (2, nv) and got.dtype == jnp.float32


@slow
def test_importance_scores_stop_gradient():
  lm = tiny_lm(num_layers=1)
  x = make_case().inputs
  h = jnp.concatenate([x.text_emb, x.vision_emb], axis=1)
  pos = jnp.concatenate([x.text_pos, x.vision_pos], axis=1)
  valid = jnp.ones(pos.shape, bool)

  def total(h, stop):
    return importance_scores(
      lm.layers[0],
      h,
      pos,
      valid,
      x.query_index,
      x.query_valid,
      span_start=8,
      span_len=8,
      inv_freq=lm._inv_freq(),
      stop_gradient=stop,
    ).sum()

  assert not np.asarray(jax.grad(total)(h, True)).any()
  assert np.abs(jax.grad(total)(h, False)).max() > 0


def test_importance_scores_bad_span():
  lm = tiny_lm(num_layers=1)
  x = make_case().inputs
  pos = x.text_pos
  with pytest.raises(ValueError, match="span"):
    importance_scores(
      lm.layers[0],
      x.text_emb,
      pos,
      x.text_valid,
      x.query_index,
      x.query_valid,
      span_start=4,
      span_len=8,
      inv_freq=lm._inv_freq(),
    )
