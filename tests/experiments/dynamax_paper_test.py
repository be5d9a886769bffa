"""DYNAMAX's `paper` preset: memory plan, refusal, features on disk."""

import dataclasses

import numpy as np
import pytest

from experiments import memory_check
from experiments.dynamax import __main__ as experiment
from experiments.dynamax import configs, scale
from jaxexit.methods.dynamax_train import ExitFeatures
from jaxexit.methods.feature_shards import FeatureShards
from jaxexit.sharding.memory_plan import MemoryPlanError
from tests.jaxexit.methods.dynamax_test import _backbone
from tests.tiers import slow


def _device_gib(monkeypatch, gib):
  monkeypatch.setattr(
    memory_check, "device_memory_bytes", lambda devices=None: int(gib * 2**30)
  )


@slow  # two abstract 7B backbones, ~10 s alone
@pytest.mark.parametrize(
  "backbone, name", [("transformer", "Mistral-7B"), ("mamba", "Codestral")]
)
def test_paper_preset_plans_then_refuses_or_needs_the_model_dir(
  tmp_path, monkeypatch, capsys, backbone, name
):
  args = ["--preset", "paper", "--backbone", backbone, "--out"]
  _device_gib(monkeypatch, 16)
  with pytest.raises(MemoryPlanError, match=f"{name}.*short by"):
    experiment.main(args + [str(tmp_path / "a")])
  out = capsys.readouterr().out
  # The classifier kind that needs most (mamba) is the plan printed.
  assert "trains 3 mamba exit classifiers" in out and "does NOT fit" in out
  _device_gib(monkeypatch, 4096)
  with pytest.raises(ValueError, match="--model-dir"):
    experiment.main(args + [str(tmp_path / "b")])
  assert "fits" in capsys.readouterr().out


def test_paper_preset_streams_features_to_disk():
  assert configs.get_config("paper").feature_store == "disk"
  # cpu: on disk too, so a rerun reuses them (features are computed once).
  assert configs.get_config("cpu").feature_store == "disk"
  assert configs.get_config("smoke").feature_store == "memory"
  with pytest.raises(ValueError, match="feature_store='tape'"):
    configs.get_config("smoke", feature_store="tape")


@slow
def test_disk_features_equal_memory_features(tmp_path):
  backbone = _backbone()
  rows = np.random.default_rng(0).integers(1, 32, (9, 12)).astype(np.int32)
  smoke = configs.get_config("smoke", feature_batch=4)
  feats = {
    store: scale.training_features(
      dataclasses.replace(smoke, feature_store=store),
      backbone,
      rows,
      (2, 4),
      tmp_path,
      progress=False,
    )
    for store in configs.FEATURE_STORES
  }
  assert type(feats["memory"]) is ExitFeatures
  assert isinstance(feats["disk"], FeatureShards)
  assert (tmp_path / "features" / "manifest.json").is_file()
  index = np.arange(9)[::-1]
  want = feats["memory"].batch(index)
  for key, value in feats["disk"].batch(index).items():
    np.testing.assert_allclose(value, want[key], atol=1e-6, err_msg=key)
