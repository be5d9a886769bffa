"""Presets for `python -m experiments.dynamic_perceiver`.

  python -m experiments.dynamic_perceiver --preset smoke --out /tmp/dp_smoke
  python -m experiments.dynamic_perceiver --preset cpu
  python -m experiments.dynamic_perceiver --preset paper

(default --out: runs/dynamic_perceiver_<preset>.)

`smoke` proves the pipeline end to end on real CIFAR-10 subsets (a tiny CNN, 20
steps, 5 budgets) in about 2 minutes on 2 cores. `cpu` is the small
reproduction on 2 cores: a 4-stage ResNet-style CNN (stem stride 2, channels
24-192) with L = 16 latents, both models trained for the same 900 steps of
batch 64 (~1.3 epochs; Dynamic Perceiver takes ~4 min, the CNN ~1 min), all 33
of the paper's budgets. `paper` has Dynamic Perceiver's ImageNet recipe (§9.2)
on CIFAR-10 resized to 224: the ImageNet-pretrained EfficientNet-Lite0 as the
feature branch (the closest offline stand-in for the paper's MobileNetV3/RegNet
branches), 128 latents, SA depths [3, 3, 9, 9] (the MobileNet variant's depth
factor [1, 1, 1, 3]), heads [1, 2, 4, 8], AdamW lr 1e-3 at batch 1024 with
weight decay 0.05, 20 warm-up epochs of 300, cosine to 1e-6, label smoothing
0.1. Not reproduced: RandAugment, mixup/cutmix, random erasing and the EMA of
the weights. It needs an accelerator.

When the data dir has no CIFAR-10, every preset runs on the subset bundled
with jaxexit (5,000 train / 1,000 test images): `cpu` and `paper` then hold
out 500 images instead of 5,000 and train on the other 4,500, and the run
prints so. With the full data the sizes above apply unchanged.
"""

import dataclasses

from jaxexit import checks
from jaxexit.exits.budgeted import DYN_PERCEIVER_R_VALUES
from jaxexit.models.cnn_stages import StagedCNNConfig
from jaxexit.models.dyn_perceiver import DynPerceiverConfig

FEATURE_BRANCHES = ("cnn", "efficientnet_lite0")
NUM_CLASSES = 10


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  """One run's settings (both models share them).

  Attributes:
    feature_branch: "cnn" (a `StagedCNN` from scratch) or
      "efficientnet_lite0" (ImageNet-pretrained).
    image_size: model input size (CIFAR's 32 x 32 images are resized).
    stem_channels, stem_stride, channels, depths, strides, block: the
      `StagedCNN` (feature_branch "cnn").
    num_latents, sa_depths, sa_heads, sa_widening: the latent branch.
    num_val: held-out images carved from CIFAR-10 train (threshold fitting).
    max_train: training images used (None: all 50000 - num_val).
    max_test: test images used (None: all 10000).
    batch_size: training batch size.
    steps: updates per model (AdamW, linear warm-up + cosine).
    learning_rate, weight_decay, warmup_steps, end_lr: the optimizer.
    kd_weight: α_kd of the self-distillation from the last exit (§9.2).
    baseline_kd: give the multi-exit CNN the same distillation.
    temperature: T of the distillation.
    label_smoothing: ε of the cross-entropies.
    crop_padding: random-crop padding (at 32 x 32, before resizing).
    checkpoint_every: checkpoint interval (steps).
    r_values: geometric ratios of the budgeted protocol (§7).
    eval_batch_size: batch of the logit pass and of `compacted` timing.
    buckets: batch sizes `compacted` may shrink to (the eval batch size is
      always one); fewer sizes compile fewer programs.
    timing_batches: test batches timed per record (compacted).
    batch1_examples: test examples timed one by one (early_stop).
    timing_repeats: timed rounds per measurement.
    seed: initialisation, data order, augmentation and the val split.
  """

  feature_branch: str = "cnn"
  image_size: int = 32
  stem_channels: int = 16
  stem_stride: int = 2
  channels: tuple[int, ...] = (24, 48, 96, 192)
  depths: tuple[int, ...] = (1, 1, 2, 1)
  strides: tuple[int, ...] = (1, 2, 2, 2)
  block: str = "basic"
  num_latents: int = 16
  sa_depths: tuple[int, ...] = (1, 1, 2, 1)
  sa_heads: tuple[int, ...] = (1, 2, 4, 8)
  sa_widening: int = 4
  num_val: int = 5000
  max_train: int | None = None
  max_test: int | None = None
  batch_size: int = 64
  steps: int = 900
  learning_rate: float = 2e-3
  weight_decay: float = 0.05
  warmup_steps: int = 50
  end_lr: float = 1e-5
  kd_weight: float = 0.5
  baseline_kd: bool = True
  temperature: float = 1.0
  label_smoothing: float = 0.0
  crop_padding: int = 4
  checkpoint_every: int = 100
  r_values: tuple[float, ...] = DYN_PERCEIVER_R_VALUES
  eval_batch_size: int = 64
  buckets: tuple[int, ...] = (8, 16, 32, 48)
  timing_batches: int = 2
  batch1_examples: int = 8
  timing_repeats: int = 2
  seed: int = 0

  def __post_init__(self):
    checks.one_of("feature_branch", self.feature_branch, FEATURE_BRANCHES)
    for name in (
      "image_size",
      "num_val",
      "batch_size",
      "steps",
      "eval_batch_size",
      "timing_batches",
      "batch1_examples",
      "timing_repeats",
      "checkpoint_every",
    ):
      checks.positive_int(f"Config.{name}", getattr(self, name))
    if not self.r_values:
      raise ValueError("Config.r_values must hold at least one ratio")
    if self.warmup_steps >= self.steps:
      raise ValueError(
        f"Config.warmup_steps={self.warmup_steps} must be "
        f"below steps={self.steps}"
      )

  def cnn_config(self) -> StagedCNNConfig:
    return StagedCNNConfig(
      num_classes=NUM_CLASSES,
      stem_channels=self.stem_channels,
      stem_stride=self.stem_stride,
      channels=self.channels,
      depths=self.depths,
      strides=self.strides,
      block=self.block,
    )

  def perceiver_config(self) -> DynPerceiverConfig:
    return DynPerceiverConfig(
      num_classes=NUM_CLASSES,
      image_size=self.image_size,
      num_latents=self.num_latents,
      sa_depths=self.sa_depths,
      sa_heads=self.sa_heads,
      sa_widening=self.sa_widening,
    )


PRESETS = {
  "smoke": Config(
    stem_channels=8,
    channels=(8, 16, 16, 32),
    depths=(1, 1, 1, 1),
    num_latents=8,
    sa_depths=(1, 1, 1, 1),
    sa_heads=(1, 1, 2, 2),
    num_val=256,
    max_train=512,
    max_test=256,
    batch_size=32,
    steps=20,
    warmup_steps=5,
    checkpoint_every=10,
    r_values=(0.25, 0.5, 1.0, 2.0, 4.0),
    eval_batch_size=64,
    buckets=(16, 32),
    timing_batches=1,
    batch1_examples=2,
    timing_repeats=1,
  ),
  "cpu": Config(),
  "paper": Config(
    feature_branch="efficientnet_lite0",
    image_size=224,
    num_latents=128,
    sa_depths=(3, 3, 9, 9),
    sa_heads=(1, 2, 4, 8),
    sa_widening=4,
    batch_size=1024,
    steps=13_200,
    warmup_steps=880,
    learning_rate=1e-3,
    weight_decay=0.05,
    end_lr=1e-6,
    label_smoothing=0.1,
    checkpoint_every=500,
    eval_batch_size=256,
    buckets=(32, 64, 128, 192),
    timing_batches=8,
    batch1_examples=64,
    timing_repeats=5,
  ),
}


def get_config(preset: str = "cpu", **overrides) -> Config:
  """The named preset with `overrides` applied."""
  checks.one_of("preset", preset, sorted(PRESETS))
  return dataclasses.replace(PRESETS[preset], **overrides)
