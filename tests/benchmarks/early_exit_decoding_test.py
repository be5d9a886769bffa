import importlib.util
import json
import pathlib
import sys

import numpy as np
import pytest
from flax import nnx

from jaxexit.models.llama import LlamaConfig, LlamaLM
from tests.tiers import slow

_PATH = (
  pathlib.Path(__file__).resolve().parents[2]
  / "benchmarks"
  / "early_exit_decoding.py"
)


def _load_benchmark():
  spec = importlib.util.spec_from_file_location("early_exit_decoding", _PATH)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


bench = _load_benchmark()


def test_search_threshold_bisects_to_the_nearest_depth():
  grid = np.linspace(0.0, 1.0, 101)
  calls = []

  def depth_at(lam):  # a step function, increasing in λ
    calls.append(lam)
    return float(np.floor(lam * 10))

  lam, depth, runs = bench.search_threshold(
    depth_at, grid, guess=0, target=6.0, steps=20, tolerance=0.0
  )
  assert depth == 6.0 and 0.6 <= lam < 0.7
  assert runs == len(calls) == len(set(calls)) <= 8


def test_search_threshold_reports_an_unreachable_target_honestly():
  grid = np.linspace(0.0, 1.0, 11)
  lam, depth, runs = bench.search_threshold(
    lambda lam: 10.0 + lam, grid, guess=5, target=2.0, steps=10, tolerance=0.1
  )
  assert (lam, depth) == (0.0, 10.0) and runs <= 5


def test_simulated_depths_take_the_first_confident_exit():
  conf = np.array([[0.9, 0.2], [0.1, 0.5], [0.1, 0.2]])  # [Q, E]
  grid = bench.threshold_grid(conf)
  np.testing.assert_array_equal(grid, [0.0, 0.1, 0.2, 0.5, 0.9, 1.0])
  depths = bench.simulated_depths(conf, grid, (0, 2, 4, 6))
  np.testing.assert_allclose(depths, [2, 2, 10 / 3, 4, 14 / 3, 6])


@pytest.mark.parametrize(
  "field, value",
  [
    ("backbones", ("gpt",)),
    ("modes", ("skip",)),
    ("num_prompts", (1, 2)),
    ("max_new_tokens", 1),
    ("repeats", 0),
    ("tolerance", 2.0),
  ],
)
def test_settings_reject_bad_values(field, value):
  kw = {"backbones": ("transformer",), "num_prompts": (1,), field: value}
  with pytest.raises(ValueError, match=field):
    bench.Settings(**kw)


@slow
def test_measure_backbone_on_a_tiny_decoder():
  model = LlamaLM(
    LlamaConfig(
      vocab_size=32,
      d_model=16,
      num_layers=4,
      num_heads=4,
      num_kv_heads=2,
      mlp_hidden=32,
      max_position=64,
    ),
    rngs=nnx.Rngs(0),
  )
  prompts = np.array([[3, 7, 1, 9, 4], [5, 8, 2, 0, 0]], np.int32)
  lengths = np.array([5, 3], np.int32)
  modes = ("propagate", "oracle")
  settings = bench.Settings(
    backbones=("transformer",),
    num_prompts=(2,),
    modes=modes,
    max_new_tokens=4,
    warmup=0,
    repeats=1,
    search_steps=2,
  )
  records = bench.measure_backbone(
    "tiny", model, prompts, lengths, (2,), settings, log=lambda msg: None
  )
  assert [(r["state_mode"], r["target_fraction"]) for r in records] == [
    (m, t) for m in modes for t in bench.TARGETS
  ]
  for r in records:
    assert 2 <= r["avg_layers"] <= 4
    assert r["ratio"] == pytest.approx(
      r["realised_speedup"] / r["theoretical_speedup"], rel=1e-3
    )
    assert r["search_runs"] <= 2
    if r["state_mode"] == "oracle":  # every block and every exit head
      assert r["flops_fraction"] > 1
  json.dumps(records)
  text = bench.render(
    records,
    {"tiny": "test"},
    bench.Settings(backbones=("transformer",), num_prompts=(2,)),
    quick=True,
  )
  assert text.count("\n| tiny |") == len(records)
