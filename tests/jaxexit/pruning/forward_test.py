"""pruned_forward against the unpruned model and a mask-based reference."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest

from jaxexit.pruning import (
  VisionSchedule,
  fastv_schedule,
  full_schedule,
  hidrop_from_stages,
  pruned_forward,
  pyramiddrop_schedule,
)
from tests.jaxexit.pruning.tiny import (
  make_case,
  masked_reference,
  tiny_lm,
  vanilla_logits,
)
from tests.tiers import fast_only, slow

TOL = dict(rtol=1e-5, atol=1e-5)


IMPLS = ("xla", "pallas")


def _valid_rows(case):
  return np.asarray(case.inputs.text_valid)


@pytest.mark.parametrize("impl", IMPLS)
def test_keep_all_equals_vanilla(impl):
  lm = tiny_lm()
  case = make_case(pad=(0, 3))  # row 1 right-padded
  out = pruned_forward(lm, case.inputs, full_schedule(6, 8), impl=impl)
  want = vanilla_logits(lm, case)
  v = _valid_rows(case)
  np.testing.assert_allclose(out.logits[v], want[v], **TOL)
  assert out.logits.dtype == jnp.float32
  assert out.hidden.shape == (2, 8, 32) and out.kept_indices == ()
  assert out.vision_counts == (8,) * 6
  np.testing.assert_array_equal(out.text_pos, case.inputs.text_pos)


SCHEDULES = {
  # late injection at 1, drops after 2 and 3, exit at 5 (HiDrop shape).
  "hidrop": hidrop_from_stages(6, 8, 1, 5, (2, 3), (4, 2)),
  "hidrop_current": VisionSchedule(
    keep=(0, 8, 8, 3, 3, 0), num_vision=8, score_layer="current"
  ),
  "fastv": fastv_schedule(6, 8, k=2),
  "pyramiddrop": pyramiddrop_schedule(6, 8, num_stages=3),
}


@functools.cache
def _case():
  return make_case(pad=(0, 2), num_queries=2)


@functools.cache
def _reference(name: str):
  return masked_reference(tiny_lm(), _case(), SCHEDULES[name])


@pytest.mark.parametrize("impl", fast_only(IMPLS, "xla", slow_too=("pallas",)))
@pytest.mark.parametrize("name", fast_only(SCHEDULES, "hidrop_current"))
def test_compacted_equals_masked_reference(name, impl):
  """Same sequence, dropped vision tokens hidden as keys from their drop
  on, positions untouched (or renumbered the reference's own way)."""
  lm, case = tiny_lm(), _case()
  schedule = SCHEDULES[name]
  out = pruned_forward(lm, case.inputs, schedule, impl=impl)
  want, kept, pos = _reference(name)
  v = _valid_rows(case)
  assert len(out.kept_indices) == len(kept) == len(schedule.drop_layers)
  for got_idx, want_idx in zip(out.kept_indices, kept):
    np.testing.assert_array_equal(got_idx, want_idx)
  np.testing.assert_allclose(out.logits[v], want[v], **TOL)
  np.testing.assert_array_equal(np.asarray(out.text_pos)[v], np.asarray(pos)[v])


@slow
def test_pyramiddrop_renumbers_positions():
  lm, case = tiny_lm(), _case()
  schedule = SCHEDULES["pyramiddrop"]  # 8, 8, 4, 4, 2, 2 tokens
  out = pruned_forward(lm, case.inputs, schedule)
  # Last layers: prefix 0..2, two vision tokens at 3, 4, suffix 5..9.
  np.testing.assert_array_equal(out.text_pos[0], [0, 1, 2, 5, 6, 7, 8, 9])
  persistent = pruned_forward(
    lm, case.inputs, VisionSchedule(keep=schedule.keep, num_vision=8)
  )
  np.testing.assert_array_equal(
    persistent.text_pos[0], [0, 1, 2, 11, 12, 13, 14, 15]
  )
  assert not np.allclose(out.logits, persistent.logits, atol=1e-3)


def test_dropping_unattended_tokens_changes_nothing():
  """Vision tokens 4..7 carry ids after every text token, so no text
  query ever sees them: their scores are 0, they are the ones dropped, and
  with persistent ids the text logits do not move."""
  lm = tiny_lm()
  vision_pos = np.array([3, 4, 5, 6, 100, 101, 102, 103])
  case = make_case(prefix=3, num_vision=8, suffix=5, vision_pos=vision_pos)
  full = pruned_forward(lm, case.inputs, full_schedule(6, 8))
  for schedule in (
    hidrop_from_stages(6, 8, 0, 6, (1,), (4,)),
    fastv_schedule(6, 8, k=1),
  ):
    out = pruned_forward(lm, case.inputs, schedule)
    np.testing.assert_array_equal(out.kept_indices[0], [[0, 1, 2, 3]] * 2)
    np.testing.assert_allclose(out.logits, full.logits, **TOL)


def test_bad_inputs():
  lm = tiny_lm()
  case = make_case()
  x = case.inputs
  with pytest.raises(
    ValueError, match="len\\(keep\\)=4 counts but the model has num_layers=6"
  ):
    pruned_forward(lm, x, full_schedule(4, 8))
  with pytest.raises(
    ValueError,
    match="vision_emb must have shape "
    r"\(2, 6, 32\)",
  ):
    pruned_forward(lm, x, full_schedule(6, 6))
  bad = {
    "text_pos": (x.text_pos[:, :-1], r"text_pos must have shape \(2, 8\)"),
    "text_emb": (x.text_emb[..., :16], r"text_emb must be \[B, T, D=32\]"),
    "vision_pos": (x.vision_pos[:1], "vision_pos must have shape"),
    "query_valid": (x.query_valid[:, :0], "shapes must match"),
  }
  for field, (value, match) in bad.items():
    fields = {**vars(x), field: value}
    with pytest.raises(ValueError, match=match):
      pruned_forward(lm, type(x)(**fields), full_schedule(6, 8))
  with pytest.raises(ValueError, match="impl"):
    pruned_forward(lm, x, full_schedule(6, 8), impl="triton")
  with pytest.raises(ValueError, match="selection"):
    pruned_forward(lm, x, full_schedule(6, 8), selection="gumbel")
