import json
import os
import pathlib

import numpy as np
import pytest

from experiments.jei_dnn import __main__ as experiment
from experiments.jei_dnn import configs, notes
from tests.tiers import slow

DATA = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"
DATA_DIR = os.environ.get("JAXEXIT_DATA") or (
  str(DATA) if DATA.exists() else None
)


def test_one_seed_claims_say_the_interval_is_undefined():
  """`--seeds 0` (the notebook in CI) has no interval over seeds: the claim
  lines say so instead of failing to format None."""
  one_seed = {
    "verdict": "inconclusive (n < 2)",
    "diff_mean": 0.01,
    "diff_ci": [None, None],
    "n": 1,
  }
  text = notes._verdict_lines(
    {
      "accuracy_at_matched_cost": one_seed,
      "ece_lower": one_seed,
      "cost_gap": one_seed,
    }
  )
  assert text.count("95 % CI undefined with n=1") == 2


@pytest.mark.parametrize("preset", sorted(configs.PRESETS))
def test_presets_build(preset):
  cfg = configs.get_config(preset)
  assert cfg.default_gamma in cfg.gammas and len(cfg.seeds) >= 2
  assert cfg.resolution % 32 == 0


def test_bad_arguments():
  with pytest.raises(ValueError, match="preset='huge'"):
    configs.get_config("huge")
  with pytest.raises(ValueError, match="gamma=-0.5"):
    experiment.parse_args(["--gammas", "0.1,-0.5"])
  with pytest.raises(ValueError, match="gamma='x'"):
    experiment.parse_args(["--gammas", "0.1,x"])
  with pytest.raises(ValueError, match="gammas"):
    configs.get_config("smoke", gammas=(-1.0,))
  with pytest.raises(ValueError, match="default_gamma"):
    configs.get_config("smoke", default_gamma=9.0)
  with pytest.raises(ValueError, match="seeds"):
    experiment.parse_args(["--seeds", "0,a"])


def test_default_out_gammas_and_seeds():
  args = experiment.parse_args(
    ["--preset", "smoke", "--gammas", "0.5,2", "--seeds", "3,4"]
  )
  assert args.out == pathlib.Path("runs/jei_dnn_smoke")
  assert args.gammas == (0.5, 2.0) and args.seeds == (3, 4)
  assert experiment._config(args).default_gamma == 0.5


@slow
@pytest.mark.skipif(DATA_DIR is None, reason="no data dir with CIFAR-10")
def test_smoke_preset_spreads_exits_and_beats_the_constant(tmp_path):
  argv = ["--preset", "smoke", "--out", str(tmp_path), "--no-progress"]
  experiment.main(argv + ["--data-dir", DATA_DIR])
  for name in ("results.json", "results.md", "curve.png", "runs.json"):
    assert (tmp_path / name).is_file(), name
  body = json.loads((tmp_path / "results.json").read_text())
  cfg = configs.get_config("smoke")
  points = {(r["method"], r["budget_or_threshold"]): r for r in body["records"]}
  jei = points[("jei_dnn", cfg.default_gamma)]
  assert jei["seeds"] == list(cfg.seeds)
  for field in ("accuracy", "ece", "flops_fraction"):
    lo, hi = jei[f"{field}_ci"]
    assert lo <= jei[field] <= hi, field
  # Collapse check: the gates at the default γ send at least 5 % of the
  # test examples to each of >= 2 exits (a collapsed gate sends all to
  # one; smoke: shares ~[0, 0.19, 0.72, 0.09, 0]).
  assert np.sum(np.asarray(jei["exit_fractions"]) >= 0.05) >= 2, jei
  # The full model beats the majority class (smoke: 0.59 vs 0.11).
  full, majority = points[("full", "final")], points[("majority", "constant")]
  assert full["accuracy"] > majority["accuracy"] + 0.2
  verdict = body["verdicts"]["jei_dnn"]["accuracy_at_matched_cost"]
  assert verdict["verdict"] in (
    "reproduced",
    "contradicted",
    "inconclusive",
  )
  assert body["timing"][0]["realised_speedup_compacted"] > 0
  # A rerun reads the finished seeds back and writes the same numbers.
  runs = (tmp_path / "runs.json").read_text()
  experiment.main(argv + ["--data-dir", DATA_DIR])
  assert (tmp_path / "runs.json").read_text() == runs
