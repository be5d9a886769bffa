import json
import math
import os
import pathlib

import pytest

from experiments.dynamax import __main__ as experiment
from experiments.dynamax import configs
from jaxexit import train as train_lib

DATA = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"
DATA_DIR = os.environ.get("JAXEXIT_DATA") or (
  str(DATA) if DATA.exists() else None
)
FIELDS = (
  "backbone",
  "classifier",
  "state_mode",
  "threshold",
  "avg_layers",
  "flops_fraction",
  "consistency",
  "accuracy",
  "tokens_per_s",
  "full_tokens_per_s",
)


@pytest.mark.parametrize("preset", sorted(configs.PRESETS))
def test_presets_build(preset):
  cfg = configs.get_config(preset)
  assert cfg.thresholds and cfg.classifiers and cfg.state_modes
  assert cfg.exit_layers(30) == tuple(sorted(set(cfg.exit_layers(30))))


def test_bad_arguments():
  with pytest.raises(ValueError, match="preset='huge'"):
    configs.get_config("huge")
  with pytest.raises(ValueError, match="classifiers"):
    configs.get_config("smoke", classifiers=("linear",))
  with pytest.raises(ValueError, match="thresholds"):
    configs.get_config("smoke", thresholds=(1.5,))
  with pytest.raises(SystemExit):
    experiment.parse_args(["--classifier", "mlp,linear"])
  with pytest.raises(SystemExit):
    experiment.parse_args(["--state-mode", "skip"])
  args = experiment.parse_args(["--state-mode", "all", "--classifier", "mlp"])
  assert args.state_mode == ("oracle", "propagate", "recompute", "freeze")
  assert args.classifier == ("mlp",)
  assert args.out == pathlib.Path("runs/dynamax_cpu_transformer")


@pytest.mark.slow
@pytest.mark.skipif(DATA_DIR is None, reason="no data dir with the text sets")
@pytest.mark.parametrize("backbone", configs.BACKBONES)
def test_smoke_preset_writes_results(tmp_path, backbone):
  experiment.main(
    [
      "--preset",
      "smoke",
      "--backbone",
      backbone,
      "--out",
      str(tmp_path),
      "--no-progress",
      "--data-dir",
      DATA_DIR,
    ]
  )
  out = tmp_path / backbone
  for name in ("results.json", "results.md", "curves.png"):
    assert (out / name).is_file(), name
  records = json.loads((out / "results.json").read_text())
  cfg = configs.get_config("smoke")
  points = len(cfg.classifiers) * len(cfg.state_modes) * len(cfg.thresholds)
  assert len(records) == 1 + points
  for rec in records:
    assert set(FIELDS) <= set(rec), rec
    assert rec["backbone"] == backbone
    assert 0 <= rec["consistency"] <= 1 and rec["tokens_per_s"] > 0
  # The 20-step smoke backbone supports no exit or quality property: its
  # greedy answers repeat one byte, no token is confident enough to exit at
  # λ=0.5 and TruthfulQA accuracy is 0 (its loss is still above the byte
  # unigram entropy, 3.3 nats). Two cheap properties remain.
  # (1) The backbone trained: its last logged loss is below the uniform
  # predictor's ln V, where an LM whose updates never land stays.
  # Smoke: transformer 4.77, mamba 5.20 vs ln 258 = 5.55.
  arch = getattr(cfg, backbone).arch
  loss = train_lib.read_metrics(out / "lm" / "metrics.jsonl")[-1]["loss"]
  assert loss < math.log(arch.vocab_size) - 0.2, loss
  # (2) Where no token exited, the exit-aware decoder (cache, state modes,
  # exit heads on the way) reproduces the full model token for token;
  # catches an engine that perturbs the backbone's own computation. Smoke:
  # all four points, consistency_all 1.0.
  for rec in records[1:]:
    if rec["avg_layers"] == arch.num_layers:
      assert rec["consistency_all"] == 1.0, rec
