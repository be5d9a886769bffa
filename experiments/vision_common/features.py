"""Frozen EfficientNet-Lite features of the CIFAR-10 splits, shared by the
vision experiments.

JEI-DNN and Dynamic Perceiver ask for the same outputs (`OUTPUTS`) of the
same images at the same resolution, so their `cpu` presets share one cache
pass per split (`jaxexit.models.efficientnet_features`).
"""

from experiments.vision_common.splits import Splits
from jaxexit.models import efficientnet_features

# Every stage map, its pooled vector and the head features.
OUTPUTS = (
  tuple(f"stage{i}" for i in range(4))
  + tuple(f"pooled{i}" for i in range(4))
  + ("head",)
)


def split_features(
  splits: Splits,
  *,
  variant: str,
  resolution: int,
  batch_size: int = 128,
  progress: bool | None = None,
) -> dict[str, dict]:
  """`{"train"|"val"|"test": {output: memmap [N, ...]}}` for `splits`."""
  return {
    name: efficientnet_features.lite_features(
      getattr(splits, name).images,
      f"cifar10-{name}",
      variant=variant,
      resolution=resolution,
      outputs=OUTPUTS,
      batch_size=batch_size,
      progress=progress,
    )
    for name in ("train", "val", "test")
  }
