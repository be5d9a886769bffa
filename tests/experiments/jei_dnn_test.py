import json
import os
import pathlib

import numpy as np
import pytest

from experiments.jei_dnn import __main__ as experiment
from experiments.jei_dnn import configs
from experiments.vision_common import RESULT_FIELDS

DATA = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"
DATA_DIR = os.environ.get("JAXEXIT_DATA") or (
  str(DATA) if DATA.exists() else None
)


@pytest.mark.parametrize("preset", sorted(configs.PRESETS))
def test_presets_build(preset):
  cfg = configs.get_config(preset)
  assert cfg.gammas and cfg.r_values and cfg.steps > 0


def test_bad_arguments():
  with pytest.raises(ValueError, match="preset='huge'"):
    configs.get_config("huge")
  with pytest.raises(ValueError, match="gamma=-0.5"):
    experiment.parse_args(["--gammas", "0.1,-0.5"])
  with pytest.raises(ValueError, match="gamma='x'"):
    experiment.parse_args(["--gammas", "0.1,x"])
  with pytest.raises(ValueError, match="gammas"):
    configs.get_config("smoke", gammas=(-1.0,))
  with pytest.raises(ValueError, match="vit='vit_huge'"):
    configs.get_config("smoke", vit="vit_huge")


def test_default_out_and_gammas():
  args = experiment.parse_args(["--preset", "smoke", "--gammas", "0.5,2"])
  assert args.out == pathlib.Path("runs/jei_dnn_smoke")
  assert args.gammas == (0.5, 2.0)


@pytest.mark.slow
@pytest.mark.skipif(DATA_DIR is None, reason="no data dir with CIFAR-10")
def test_smoke_preset_writes_results_and_resumes(tmp_path):
  argv = [
    "--preset",
    "smoke",
    "--out",
    str(tmp_path),
    "--no-progress",
    "--data-dir",
    DATA_DIR,
  ]
  experiment.main(argv)
  for name in ("results.json", "results.md", "curve.png"):
    assert (tmp_path / name).is_file(), name
  records = json.loads((tmp_path / "results.json").read_text())
  cfg = configs.get_config("smoke")
  methods = [r["method"] for r in records]
  assert methods.count("full") == 1
  assert methods.count("jei_dnn") == len(cfg.gammas)
  assert methods.count("max_softmax") == len(cfg.r_values)
  assert methods.count("fixed_exit") == 2  # tiny ViT: 3 blocks
  for r in records:
    for field in RESULT_FIELDS + (
      "realised_speedup_batch1",
      "coverage",
      "mean_set_size",
    ):
      assert r[field] is not None or field == "budget_or_threshold", (field, r)
    assert 0.0 <= r["accuracy"] <= 1.0 and r["realised_speedup"] > 0
    assert 0.0 < r["flops_fraction"] <= 1.01
  full = next(r for r in records if r["method"] == "full")
  assert full["flops_fraction"] == 1.0
  assert [
    r["budget_or_threshold"] for r in records if r["method"] == "jei_dnn"
  ] == list(cfg.gammas)
  # The backbone and every exit and operating point beat the constant
  # predictor (the test subset's majority class, from the run's feature
  # cache) by 2 points; a collapsed backbone or inference module sits at or
  # below it. Smoke: lowest record 0.167 (the full backbone) vs 0.112.
  labels = np.load(tmp_path / "features" / "test.npz")["labels"]
  majority = np.bincount(labels).max() / len(labels)
  assert min(r["accuracy"] for r in records) > majority + 0.02, majority
  # A larger γ prices computation higher, so the gates must exit earlier;
  # catches gates that ignore γ (a dropped cost term). Smoke: flops fraction
  # 0.668 at γ=0.1 (all at exit 2), 0.334 at γ=1 (all at exit 1).
  jei = [
    f
    for _, f in sorted(
      (r["budget_or_threshold"], r["flops_fraction"])
      for r in records
      if r["method"] == "jei_dnn"
    )
  ]
  assert all(a > b for a, b in zip(jei, jei[1:])), jei
  text = (tmp_path / "results.md").read_text()
  assert "Claims tested" in text and "94.95" in text
  # A rerun resumes every stage from disk and rewrites the same accuracies.
  experiment.main(argv)
  again = json.loads((tmp_path / "results.json").read_text())
  assert [r["accuracy"] for r in again] == [r["accuracy"] for r in records]
