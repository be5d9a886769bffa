"""Tests for experiments.vision_common (curves, results, plots)."""

import json

import jax
import numpy as np
import pytest

from experiments import vision_common
from experiments.vision_common import curves
from jaxexit import calibration
from jaxexit.exits import budgeted

L, C = 4, 10
COSTS = (20e6, 45e6, 70e6, 100e6)


def _logits(seed, n):
  """Exits that get better with depth: signal on the label grows with k."""
  k1, k2 = jax.random.split(jax.random.key(seed))
  labels = np.asarray(jax.random.randint(k1, (n,), 0, C))
  noise = np.asarray(jax.random.normal(k2, (n, L, C)))
  signal = np.linspace(0.5, 3.0, L)[None, :, None] * np.eye(C)[labels][:, None]
  return noise + signal, labels


def test_budget_curve_records():
  (vz, vy), (tz, ty) = _logits(0, 300), _logits(1, 300)
  recs = curves.budget_curve(
    "msdnet",
    vz,
    vy,
    tz,
    ty,
    COSTS,
    100e6,
    budgeted.DYN_PERCEIVER_R_VALUES,
    rescale=budgeted.DYN_PERCEIVER_RESCALE,
  )
  assert len(recs) == len(budgeted.DYN_PERCEIVER_R_VALUES) == 32
  for rec in recs:
    assert set(vision_common.RESULT_FIELDS) <= rec.keys()
    assert COSTS[0] <= rec["avg_flops"] <= COSTS[-1]
    assert rec["flops_fraction"] == pytest.approx(rec["avg_flops"] / 100e6)
    assert 0 <= rec["ece"] <= 1 and 0 <= rec["accuracy"] <= 1
    assert len(rec["thresholds"]) == L and rec["thresholds"][-1] == -np.inf
    assert sum(rec["exit_fractions"]) == pytest.approx(1.0)
  assert recs[0]["avg_flops"] < recs[-1]["avg_flops"]
  assert recs[0]["accuracy"] < recs[-1]["accuracy"]
  assert recs[0]["budget_or_threshold"] == 0.2


def test_fixed_and_gated_records():
  tz, ty = _logits(1, 200)
  fixed = curves.fixed_exit_records("static", tz, ty, COSTS, 100e6)
  assert [r["budget_or_threshold"] for r in fixed] == [
    "exit0",
    "exit1",
    "exit2",
    "exit3",
  ]
  assert [r["avg_flops"] for r in fixed] == list(COSTS)
  acc = (tz.argmax(-1) == ty[:, None]).mean(0)
  np.testing.assert_allclose([r["accuracy"] for r in fixed], acc)
  exits = np.arange(200) % L
  (gated,) = curves.gated_records(
    "jei", tz, ty, exits, COSTS, 100e6, budget_or_threshold=1.5
  )
  assert gated["budget_or_threshold"] == 1.5
  assert gated["avg_flops"] == pytest.approx(np.mean(COSTS))
  assert gated["accuracy"] == pytest.approx(
    (tz[np.arange(200), exits].argmax(-1) == ty).mean()
  )
  with pytest.raises(ValueError, match="test_exit"):
    curves.gated_records("jei", tz, ty, exits + 1, COSTS, 100e6)
  with pytest.raises(ValueError, match="exit_costs"):
    curves.fixed_exit_records("static", tz, ty, COSTS[:3], 100e6)


def test_write_results(tmp_path):
  (vz, vy), (tz, ty) = _logits(0, 100), _logits(1, 100)
  recs = curves.budget_curve(
    "msdnet", vz, vy, tz, ty, COSTS, 100e6, [0.5, 1.0, 2.0]
  )
  recs += curves.fixed_exit_records("static", tz, ty, COSTS, 100e6)
  recs += [dict(recs[-1], method="full", realised_speedup=1.0)]
  probs = np.asarray(jax.nn.softmax(tz[:, -1]))
  bins = calibration.reliability_bins(probs.max(1), probs.argmax(1) == ty)
  vision_common.write_results(
    tmp_path / "out",
    recs,
    title="toy",
    reliability={"full": bins},
    notes="Synthetic data.",
  )
  out = tmp_path / "out"
  assert json.loads((out / "results.json").read_text()) == recs
  md = (out / "results.md").read_text()
  assert md.startswith("# toy") and "Synthetic data." in md
  assert "| msdnet | 0.5 |" in md and "100.00M" in md and "1.00x" in md
  png = (out / "curve.png").read_bytes()
  assert png.startswith(b"\x89PNG") and len(png) > 1000


def test_write_results_rejects_incomplete_records(tmp_path):
  rec = {f: 0.0 for f in vision_common.RESULT_FIELDS}
  del rec["ece"]
  with pytest.raises(ValueError, match=r"records\[1\] lacks fields \['ece'\]"):
    vision_common.write_results(
      tmp_path, [dict(rec, ece=0.1), rec], title="bad"
    )
  assert not (tmp_path / "results.json").exists()


def test_write_results_merges_with_an_earlier_run(tmp_path):
  """Two invocations into one --out keep both methods' records (issue 21)."""
  tz, ty = _logits(1, 100)
  static = curves.fixed_exit_records("static", tz, ty, COSTS, 100e6)
  full = [dict(static[-1], method="full", realised_speedup=1.0)]
  vision_common.write_results(tmp_path, static, title="first")
  vision_common.write_results(tmp_path, full, title="second")
  stored = json.loads((tmp_path / "results.json").read_text())
  assert [r["method"] for r in stored] == ["static"] * 4 + ["full"]
  again = [dict(static[1], accuracy=0.125)]
  vision_common.write_results(tmp_path, again, title="third")
  stored = json.loads((tmp_path / "results.json").read_text())
  assert len(stored) == 5 and stored[1]["accuracy"] == 0.125
  assert "| full |" in (tmp_path / "results.md").read_text()
