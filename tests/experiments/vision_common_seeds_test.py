"""Tests for experiments.vision_common.seeds."""

import numpy as np
import pytest

from experiments.vision_common.seeds import aggregate_seeds, seed_curves
from jaxexit import stats


def _runs():
  return {
    s: [
      {
        "method": "m",
        "budget_or_threshold": 0.5,
        "accuracy": 0.6 + 0.01 * s,
        "flops_fraction": 0.5 - 0.02 * s,
        "avg_flops": 100.0 + s,
        "ece": 0.1,
        "exit_fractions": [0.5 + 0.1 * s, 0.5 - 0.1 * s],
      },
      {
        "method": "full",
        "budget_or_threshold": "m",
        "accuracy": 0.7,
        "flops_fraction": 1.0,
        "avg_flops": 200.0,
        "ece": None,
      },
    ]
    for s in (0, 1, 2)
  }


def test_mean_and_t_interval_per_key():
  agg = aggregate_seeds(_runs())
  assert [r["method"] for r in agg] == ["m", "full"]
  rec = agg[0]
  want = stats.t_interval([0.6, 0.61, 0.62])
  assert rec["seeds"] == [0, 1, 2]
  np.testing.assert_allclose(rec["accuracy"], 0.61)
  assert rec["accuracy_ci"] == want.as_list()
  assert rec["flops_fraction_per_seed"] == [0.5, 0.48, 0.46]
  np.testing.assert_allclose(rec["exit_fractions"], [0.6, 0.4])
  assert agg[1]["ece"] is None and agg[1]["accuracy_ci"][0] == 0.7


def test_one_seed_has_no_interval():
  agg = aggregate_seeds({0: _runs()[0]})
  assert agg[0]["accuracy_ci"] == [None, None]


def test_mismatched_seeds_and_empty_are_named():
  runs = _runs()
  runs[2] = runs[2][:1]
  with pytest.raises(ValueError, match="seed 2's records differ"):
    aggregate_seeds(runs)
  with pytest.raises(ValueError, match="runs is empty"):
    aggregate_seeds({})
  with pytest.raises(ValueError, match="method='x'"):
    seed_curves(_runs(), "x")


def test_seed_curves_pair_cost_and_accuracy():
  curves = seed_curves(_runs(), "m")
  assert len(curves) == 3
  np.testing.assert_allclose(curves[1][0], [101.0])
  np.testing.assert_allclose(curves[1][1], [0.61])
