"""Vision schedules: released HiDrop configs, scaling, peers, FLOPs, errors."""

import pytest

from jaxexit.models.llama import LlamaConfig
from jaxexit.pruning import (
  SCHEDULES,
  Stage,
  VisionSchedule,
  fastv_schedule,
  full_schedule,
  prefill_flops_fraction,
  hidrop_from_stages,
  hidrop_schedule,
  make_schedule,
  pyramiddrop_schedule,
)

VICUNA_7B = LlamaConfig()  # LLaVA-1.5-7B's decoder (the defaults).


def test_released_tok64_layer_by_layer():
  s = hidrop_schedule("tok64")
  # Spec §2.3 in 1-indexed layers: 9–10: 576, 11–14: 215, 15–16: 10,
  # 17–18: 5, 19–24: 1, the rest 0.
  want = (
    [0] * 8 + [576] * 2 + [215] * 4 + [10] * 2 + [5] * 2 + [1] * 6 + [0] * 8
  )
  assert s.keep == tuple(want)
  assert (s.inject_layer, s.exit_layer) == (8, 24)
  assert s.drop_layers == (9, 13, 15, 17)
  assert s.stages[:2] == (Stage(0, 8, 0), Stage(8, 10, 576))
  assert s.position_mode == "persistent" and s.score_layer == "next"


@pytest.mark.parametrize(
  "name,avg", [("tok48", 48.0), ("tok64", 64.0), ("tok80", 2561 / 32)]
)
def test_released_averages(name, avg):
  s = hidrop_schedule(name)
  assert s.avg_vision_tokens == avg
  assert round(s.avg_vision_tokens) == int(name[3:])


def test_tok80_stages():
  s = hidrop_schedule("tok80")
  assert [(st.start, st.stop, st.count) for st in s.stages] == [
    (0, 8, 0),
    (8, 10, 576),
    (10, 13, 453),
    (13, 16, 10),
    (16, 19, 5),
    (19, 24, 1),
    (24, 32, 0),
  ]


def test_hidrop_from_stages_matches_release():
  s = hidrop_from_stages(32, 576, 8, 24, (9, 13, 15, 17), (215, 10, 5, 1))
  assert s.keep == hidrop_schedule("tok64").keep


@pytest.mark.parametrize("name", ["tok48", "tok64", "tok80"])
def test_scaled_schedules_are_valid(name):
  """Every depth and vision-token count of the grid (55 per release)."""
  for num_layers in (1, 2, 3, 4, 6, 8, 12, 16, 24, 40, 64):
    for num_vision in (1, 4, 64, 576, 1024):
      case = f"{name}, num_layers={num_layers}, num_vision={num_vision}"
      s = hidrop_schedule(name, num_layers, num_vision)
      assert (s.num_layers, s.num_vision) == (num_layers, num_vision), case
      assert max(s.keep) == num_vision, case  # the injection stage survives
      assert min(c for c in s.keep if c) >= 1, case


def test_scaling_rule():
  # Boundaries (8, 10, 14, 16, 18 | 24) · 16/32, counts · 64/576.
  s = hidrop_schedule("tok64", 16, 64)
  assert s.keep == (0,) * 4 + (64,) + (24,) * 2 + (1,) * 5 + (0,) * 4
  # Depth doubles: every stage twice as long, same mean count.
  assert hidrop_schedule("tok64", 64).avg_vision_tokens == 64.0
  # Squeezed stages vanish; the Nv stage keeps one layer.
  assert hidrop_schedule("tok64", 8, 16).keep == (0, 0, 16, 6, 1, 1, 0, 0)


def test_pyramiddrop():
  s = pyramiddrop_schedule(32, 576)
  assert s.keep == (576,) * 8 + (288,) * 8 + (144,) * 8 + (72,) * 8
  assert s.drop_layers == (7, 15, 23)
  assert s.avg_vision_tokens == 270.0
  assert s.position_mode == "reindex" and s.score_layer == "next"
  assert pyramiddrop_schedule(3, 16).keep == (16, 8, 2)


def test_fastv():
  s = fastv_schedule(32, 576)
  assert s.keep == (576,) * 2 + (288,) * 30
  assert s.drop_layers == (1,) and s.exit_layer == 32
  assert s.score_layer == "current" and s.position_mode == "persistent"
  assert fastv_schedule(4, 5, k=3, keep_ratio=0.25).keep == (5, 5, 5, 1)


def test_full_and_registry():
  s = full_schedule(4, 9)
  assert s.keep == (9,) * 4 and s.stages == (Stage(0, 4, 9),)
  assert (s.inject_layer, s.exit_layer, s.drop_layers) == (0, 4, ())
  for method, names in SCHEDULES.items():
    for name in names:
      assert make_schedule(method, name, 32, 576).num_layers == 32
  assert make_schedule("hidrop", "tok64", 32, 576) == hidrop_schedule("tok64")


@pytest.mark.parametrize(
  "text_len,row",
  [
    (40, (0.14, 0.17, 0.19, 0.50, 0.55)),
    (64, (0.17, 0.20, 0.22, 0.52, 0.57)),
    (100, (0.22, 0.24, 0.26, 0.54, 0.59)),
  ],
)
def test_flops_fraction_matches_spec_table(text_len, row):
  schedules = [hidrop_schedule(n) for n in ("tok48", "tok64", "tok80")]
  schedules += [pyramiddrop_schedule(32, 576), fastv_schedule(32, 576)]
  got = [prefill_flops_fraction(s, text_len, VICUNA_7B) for s in schedules]
  # The spec counts MACs with a 2-matrix MLP; ours is SwiGLU in FLOPs.
  assert got == pytest.approx(row, abs=0.01)


def test_flops_fraction_full_is_one_and_scoring_counts():
  cfg = LlamaConfig(
    d_model=64,
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    mlp_hidden=128,
    vocab_size=10,
  )
  assert prefill_flops_fraction(full_schedule(4, 16), 8, cfg) == 1.0
  one = prefill_flops_fraction(fastv_schedule(4, 16), 8, cfg)
  two = prefill_flops_fraction(fastv_schedule(4, 16), 8, cfg, num_queries=2)
  assert 0.5 < one < two < 1.0


@pytest.mark.parametrize(
  "keep,match",
  [
    ((), "one count per layer"),
    ((4, -1), r"keep\[1\] must be an integer >= 0"),
    ((0, 0), "non-zero count"),
    ((0, 3, 2), r"keep\[1\]=3: the injection layer must bring all"),
    ((4, 5), r"keep\[1\]=5 exceeds the num_vision=4"),
    ((4, 2, 3), r"keep\[2\]=3 exceeds the keep\[1\]=2 vision tokens"),
    ((4, 0, 2), r"keep\[2\]=2 exceeds the keep\[1\]=0"),
  ],
)
def test_bad_schedules(keep, match):
  with pytest.raises(ValueError, match=match):
    VisionSchedule(keep=keep, num_vision=4)


def test_bad_modes():
  with pytest.raises(ValueError, match="position_mode"):
    VisionSchedule(keep=(2,), num_vision=2, position_mode="shift")
  with pytest.raises(ValueError, match="score_layer"):
    VisionSchedule(keep=(2,), num_vision=2, score_layer="previous")


@pytest.mark.parametrize(
  "kw,match",
  [
    (dict(inject_layer=5, exit_layer=3), "exit_layer=3 must lie after"),
    (dict(inject_layer=8), "inject_layer=8 must be < num_layers"),
    (dict(exit_layer=9), r"exit_layer=9 .* <= num_layers=8"),
    (dict(drop_after=(3, 2)), "must increase strictly"),
    (dict(drop_after=(0, 3)), "must increase strictly"),
    (dict(drop_after=(2, 5)), "must increase strictly"),
    (dict(drop_after=(2,)), "one entry per drop"),
    (dict(keep_counts=(2, 3)), r"keep\[4\]=3 exceeds the keep\[3\]=2"),
    (dict(keep_counts=(5, 1)), r"exceeds the num_vision=4"),
  ],
)
def test_bad_hidrop_stages(kw, match):
  args = dict(
    num_layers=8,
    num_vision=4,
    inject_layer=1,
    exit_layer=6,
    drop_after=(2, 3),
    keep_counts=(2, 1),
  )
  with pytest.raises(ValueError, match=match):
    hidrop_from_stages(**{**args, **kw})


def test_bad_constructor_args():
  with pytest.raises(ValueError, match="name"):
    hidrop_schedule("tok32")
  with pytest.raises(ValueError, match="k=4 must be < num_layers=4"):
    fastv_schedule(4, 8, k=4)
  with pytest.raises(ValueError, match="ratio"):
    pyramiddrop_schedule(4, 8, ratio=0.0)
  with pytest.raises(ValueError, match="method"):
    make_schedule("sparsevlm", "x", 4, 8)
  with pytest.raises(ValueError, match="num_layers=32"):
    prefill_flops_fraction(full_schedule(4, 8), 10, VICUNA_7B)
