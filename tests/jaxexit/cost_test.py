"""Tests for jaxexit.cost: FLOP counts, speed-up maths, timing."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxexit import cost
from jaxexit import timing as timing_lib

# Shape and dtype contracts are caught by the jaxtyping hook (a TypeError)
# when tests/conftest.py installs it, else by the function (a ValueError).
CONTRACT_ERRORS = (TypeError, ValueError)


def _xla_flops(fn, *shapes):
  """FLOPs XLA's cost analysis counts for `fn` on arrays of ones."""
  args = [jnp.ones(s, jnp.float32) for s in shapes]
  analysis = jax.jit(fn).lower(*args).cost_analysis()
  if isinstance(analysis, list):
    analysis = analysis[0]
  return int(analysis["flops"])


# ------------------------------------------------------------------ FLOPs


def test_linear_flops_counts_a_multiply_add_as_two():
  assert cost.linear_flops(3, 5) == 2 * 3 * 5
  assert cost.linear_flops(3, 5, tokens=7) == 2 * 7 * 3 * 5


def test_encoder_layer_flops_hand_count():
  # T=2, D=4, H=2, F=8.
  # Q, K, V, O projections: 4 * (2 * 2*4*4) = 256
  # scores + weighted sum:   2 * (2 * 2*2*4) = 64
  # MLP 4 -> 8 -> 4:         2 * (2 * 2*4*8) = 256
  assert cost.encoder_layer_flops(2, 4, 2, 8) == 256 + 64 + 256


def test_decoder_layer_flops_hand_count_gqa_decode_step():
  # One new token attending to 10 cached positions; D=8, H=4, G=2, K=2, F=6.
  # Q: 2*8*8 = 128, K and V: 2 * (2*8*4) = 128, O: 2*8*8 = 128
  # scores + weighted sum: 2 * (2 * 1*10 * 4*2) = 320
  # SwiGLU gate, up, down: 3 * (2*8*6) = 288
  got = cost.decoder_layer_flops(1, 8, 4, 2, 6, kv_len=10)
  assert got == 128 + 128 + 128 + 320 + 288


def test_decoder_with_all_kv_heads_matches_encoder_attention_part():
  # G = H, kv_len = T: attention and projections equal the encoder layer's;
  # only the MLP differs (3 matrices instead of 2).
  t, d, h, f = 5, 8, 2, 12
  enc = cost.encoder_layer_flops(t, d, h, f)
  dec = cost.decoder_layer_flops(t, d, h, h, f)
  assert dec - enc == cost.linear_flops(d, f, t)


def test_encoder_layer_flops_match_xla_cost_analysis():
  t, d, h, f = 8, 16, 4, 32
  k = d // h

  def layer(x, wq, wk, wv, wo, w1, w2):
    q = jnp.einsum("TD,DHK->THK", x, wq)
    key = jnp.einsum("TD,DHK->THK", x, wk)
    v = jnp.einsum("TD,DHK->THK", x, wv)
    scores = jnp.einsum("THK,SHK->HTS", q, key)
    attended = jnp.einsum("HTS,SHK->THK", scores, v)
    out = jnp.einsum("THK,HKD->TD", attended, wo)
    return (out @ w1) @ w2

  xla = _xla_flops(
    layer, (t, d), (d, h, k), (d, h, k), (d, h, k), (h, k, d), (d, f), (f, d)
  )
  assert xla == cost.encoder_layer_flops(t, d, h, f)


def test_decoder_layer_flops_match_xla_cost_analysis():
  t, s, d, g, r, k, f = 3, 7, 16, 2, 3, 4, 20  # H = G * R = 6 query heads

  def layer(x, ctx, wq, wk, wv, wo, wg, wu, wd):
    q = jnp.einsum("TD,DGRK->TGRK", x, wq)
    key = jnp.einsum("SD,DGK->SGK", ctx, wk)  # cache entries, recomputed
    v = jnp.einsum("SD,DGK->SGK", ctx, wv)
    scores = jnp.einsum("TGRK,SGK->GRTS", q, key)
    attended = jnp.einsum("GRTS,SGK->TGRK", scores, v)
    out = jnp.einsum("TGRK,GRKD->TD", attended, wo)
    return ((out @ wg) * (out @ wu)) @ wd

  # The K/V projections of the analytic count cover the T new tokens only;
  # this reference projects all S positions, so add the difference.
  xla = _xla_flops(
    layer,
    (t, d),
    (s, d),
    (d, g, r, k),
    (d, g, k),
    (d, g, k),
    (g, r, k, d),
    (d, f),
    (d, f),
    (f, d),
  )
  elementwise_gate = t * f  # the `*` of SwiGLU, which the analytic count skips
  extra_kv = 2 * cost.linear_flops(d, g * k, s - t)
  want = cost.decoder_layer_flops(t, d, g * r, g, f, kv_len=s, head_dim=k)
  assert xla - elementwise_gate - extra_kv == want


@pytest.mark.parametrize(
  "sizes, match",
  [
    ((0, 4, 2, 8), "seq_len=0"),
    ((2, -4, 2, 8), "d_model=-4"),
    ((2, 4, 3, 8), "d_model=4, num_heads=3"),
    ((2, 4, 2, 0), "d_ff=0"),
  ],
)
def test_encoder_layer_flops_rejects_bad_sizes(sizes, match):
  with pytest.raises(ValueError, match=match):
    cost.encoder_layer_flops(*sizes)


def test_decoder_layer_flops_rejects_bad_sizes():
  with pytest.raises(ValueError, match="num_kv_heads=3"):
    cost.decoder_layer_flops(1, 8, 4, 3, 6)
  with pytest.raises(ValueError, match="kv_len=0"):
    cost.decoder_layer_flops(1, 8, 4, 2, 6, kv_len=0)
  with pytest.raises(ValueError, match="num_heads=3"):
    cost.decoder_layer_flops(1, 8, 3, 3, 6)  # D=8 not divisible, no head_dim
  assert cost.decoder_layer_flops(1, 8, 3, 3, 6, head_dim=2) > 0
  with pytest.raises(ValueError, match="tokens=0"):
    cost.linear_flops(2, 2, tokens=0)


# ------------------------------------------------------ per-exit costs


def test_cumulative_exit_flops_adds_every_head_evaluated():
  cum = cost.cumulative_exit_flops([10, 10, 10], [1, 2, 3])
  np.testing.assert_array_equal(cum, [11, 23, 36])
  assert cum.dtype == np.float64


def test_cumulative_exit_flops_rejects_bad_input():
  with pytest.raises(CONTRACT_ERRORS):
    cost.cumulative_exit_flops(np.ones(3), np.ones(2))
  with pytest.raises(ValueError, match="head_flops"):
    cost.cumulative_exit_flops([1.0, 2.0], [1.0, -2.0])


def test_expected_flops_is_mean_cost_of_exits_taken():
  cum = [11.0, 23.0, 36.0]
  assert cost.expected_flops(np.array([0, 2, 2, 1]), cum) == pytest.approx(
    (11 + 36 + 36 + 23) / 4
  )
  # Token-level exits [B, T] average over every entry.
  assert cost.expected_flops(np.array([[0, 0], [2, 2]]), cum) == 23.5


@pytest.mark.parametrize("exit_layer", [[3], [-1], [0, 1, 5]])
def test_expected_flops_rejects_exit_outside_range(exit_layer):
  with pytest.raises(ValueError, match="exit_layer"):
    cost.expected_flops(np.array(exit_layer), [1.0, 2.0, 3.0])


# ------------------------------------------------------ speed-up maths


def test_speedup_metrics_use_one_based_layer_counts():
  exits = np.array([0, 1, 3, 3])  # layers run: 1, 2, 4, 4 -> mean 2.75
  assert cost.avg_layers(exits) == 2.75
  assert cost.theoretical_speedup(exits, 4) == pytest.approx(4 / 2.75)
  assert cost.saved_fraction(exits, 4) == pytest.approx(1 - 2.75 / 4)


def test_no_early_exit_means_no_speedup():
  exits = jnp.full((5,), 11, jnp.int32)
  assert cost.avg_layers(exits) == 12
  assert cost.theoretical_speedup(exits, 12) == 1.0
  assert cost.saved_fraction(exits, 12) == 0.0


def test_speedup_metrics_reject_bad_input():
  with pytest.raises(ValueError, match="exit_layer"):
    cost.theoretical_speedup(np.array([0, 4]), 4)
  with pytest.raises(ValueError, match="exit_layer"):
    cost.avg_layers(np.array([-1]))
  with pytest.raises(ValueError, match="num_layers=0"):
    cost.saved_fraction(np.array([0]), 0)
  with pytest.raises(CONTRACT_ERRORS):
    cost.avg_layers(np.array([0.5]))
  with pytest.raises(ValueError, match="at least one"):
    cost.avg_layers(np.zeros((0,), np.int32))


def test_realised_speedup():
  assert cost.realised_speedup(2.0, 0.5) == 4.0
  timing = timing_lib.Timing(median=0.25, min=0.2, seconds=(0.2, 0.25, 0.3))
  assert cost.realised_speedup(1.0, timing) == 4.0
  with pytest.raises(ValueError, match="mode_seconds=-1.0"):
    cost.realised_speedup(1.0, -1.0)
  with pytest.raises(ValueError, match="full_seconds"):
    cost.realised_speedup(0.0, 1.0)


def test_cost_report_fields_and_json():
  cum = cost.cumulative_exit_flops([10, 10, 10, 10], [1, 1, 1, 1])
  report = cost.cost_report(np.array([0, 1, 3, 3]), 4, cum)
  assert report.avg_layers == 2.75
  assert report.theoretical_speedup == pytest.approx(4 / 2.75)
  assert report.saved_fraction == pytest.approx(0.3125)
  assert report.expected_flops == pytest.approx((11 + 22 + 44 + 44) / 4)
  assert report.full_flops == 44.0
  assert report.flops_fraction == pytest.approx(report.expected_flops / 44)
  loaded = json.loads(json.dumps(report.as_dict()))
  assert loaded["num_layers"] == 4 and loaded["avg_layers"] == 2.75
  # JEI-DNN normalises by the bare backbone instead of layers + heads.
  bare = cost.cost_report(np.array([3]), 4, cum, full_flops=40)
  assert bare.flops_fraction == pytest.approx(44 / 40)


def test_cost_report_without_flops_and_as_pytree():
  report = cost.cost_report([1, 1], 2)
  assert report.expected_flops is None and report.flops_fraction is None
  assert report.as_dict()["flops_fraction"] is None
  leaves = jax.tree.leaves(report)
  assert len(leaves) == 3  # None fields and static num_layers are no leaves
  doubled = jax.tree.map(lambda x: 2 * x, report)
  assert doubled.avg_layers == 4.0 and doubled.num_layers == 2
  with pytest.raises(dataclasses.FrozenInstanceError):
    report.avg_layers = 0.0


def test_cost_report_rejects_bad_input():
  with pytest.raises(ValueError, match="exit_layer"):
    cost.cost_report(np.array([2]), 2)
  with pytest.raises(ValueError, match="num_layers=3"):
    cost.cost_report(np.array([0]), 3, [1.0, 2.0])
