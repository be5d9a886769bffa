"""Presets for `python -m experiments.dynamic_perceiver`.

  python -m experiments.dynamic_perceiver --preset smoke --out /tmp/dp_smoke
  python -m experiments.dynamic_perceiver --preset cpu \
    --out experiments/dynamic_perceiver/results
  python -m experiments.dynamic_perceiver --preset paper
  python -m experiments.dynamic_perceiver --preset joint_cpu \
    --out experiments/dynamic_perceiver/results_joint

(default --out: runs/dynamic_perceiver_<preset>.)

Headline presets (`Config`; smoke, cpu, paper): the frozen ImageNet
EfficientNet-Lite0 is the feature branch, its stage maps and head features
come from the feature cache (one pass per split), and only Dynamic
Perceiver's latent branch (`jaxexit.models.dyn_perceiver_frozen`) and the
baseline's linear exits are trained, once per seed. `smoke` (2 seeds, 1,000
/ 500 / 500 images at 64 px, its own feature pass) finishes in a few
minutes on 2 cores; `cpu` is the committed headline (3 seeds, the full
45,000 / 5,000 / 10,000 split at 96 px, 33 budgets); `paper` scales the
latent branch to the released `_t128` size (128 latents, SA depths [3, 3,
9, 9]) at 224 px on the full data, for an accelerator.

Joint presets (`JointConfig`; joint_smoke, joint_cpu, joint_paper): the
earlier path that trains the feature branch together with the latent
branch, z2x feeding back into the CNN as in §9.1 (a `StagedCNN` from
scratch, or the EfficientNet-Lite0 fine-tuned in joint_paper). It needs no
weights package and is the only path with the z2x feedback; one seed.

When the data dir has no CIFAR-10, every preset runs on the subset bundled
with jaxexit (5,000 train / 1,000 test images): `cpu` and `paper` then hold
out 500 images instead of 5,000 and train on the other 4,500, and the run
prints so.
"""

import dataclasses
import types

from jaxexit import checks
from jaxexit.exits.budgeted import DYN_PERCEIVER_R_VALUES
from jaxexit.models.cnn_stages import StagedCNNConfig
from jaxexit.models.dyn_perceiver import DynPerceiverConfig
from jaxexit.models.dyn_perceiver_frozen import LatentBranchConfig

FEATURE_BRANCHES = ("cnn", "efficientnet_lite0")
NUM_CLASSES = 10


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  """One headline run: a frozen cached CNN, latent branch vs linear exits.

  Attributes:
    variant: the EfficientNet-Lite weights ("lite0").
    resolution: the backbone's input size (a multiple of 32).
    num_latents, widths, sa_depths, sa_heads, sa_widening, dwc_kernel: the
      latent branch (`LatentBranchConfig`; the paper's x2z depthwise conv is
      7x7, 3x3 here on CPU, where XLA's depthwise conv and its gradient
      dominate the step).
    num_val: held-out images carved from CIFAR-10 train (threshold fitting).
    max_train, max_test: images used (None: all).
    split_seed: the data split (fixed over seeds; keys the feature cache).
    seeds: training seeds (initialisation and data order).
    batch_size, steps: training batch and updates (both methods).
    learning_rate, weight_decay, warmup_steps, end_lr: AdamW with linear
      warm-up + cosine.
    kd_weight, temperature: α_kd and T of the self-distillation (§9.2).
    label_smoothing: ε of the cross-entropies.
    checkpoint_every: checkpoint interval (steps).
    r_values: geometric ratios of the budgeted protocol (§7).
    eval_batch_size: batch of the cached logit pass.
    paper_effect: the paper's accuracy gain at matched FLOPs (the verdict's
      "contradicted" bar), as a fraction.
    timing_points: budgeted points timed per method (seed 0): this many
      evenly spaced in FLOPs, plus the full model.
    timing_batch: batch of the `compacted` timing; buckets: the batch sizes
      it may shrink to.
    timing_batches: test batches timed in `compacted`.
    batch1_examples: test images timed one by one (`early_stop`).
    timing_repeats: timed rounds per measurement.
  """

  variant: str = "lite0"
  resolution: int = 96
  num_latents: int = 32
  widths: tuple[int, ...] = (32, 48, 64, 96)
  sa_depths: tuple[int, ...] = (1, 1, 2, 1)
  sa_heads: tuple[int, ...] = (1, 2, 4, 8)
  sa_widening: int = 4
  dwc_kernel: int = 3
  num_val: int = 5000
  max_train: int | None = None
  max_test: int | None = None
  split_seed: int = 0
  seeds: tuple[int, ...] = (0, 1, 2)
  batch_size: int = 128
  steps: int = 400
  learning_rate: float = 2e-3
  weight_decay: float = 0.05
  warmup_steps: int = 40
  end_lr: float = 1e-6
  kd_weight: float = 0.5
  temperature: float = 1.0
  label_smoothing: float = 0.0
  checkpoint_every: int = 150
  r_values: tuple[float, ...] = DYN_PERCEIVER_R_VALUES
  eval_batch_size: int = 500
  paper_effect: float = 0.01
  timing_points: int = 2
  timing_batch: int = 256
  buckets: tuple[int, ...] = (64, 128, 192)
  timing_batches: int = 1
  batch1_examples: int = 8
  timing_repeats: int = 2

  def __post_init__(self):
    for name in (
      "resolution",
      "num_val",
      "batch_size",
      "steps",
      "eval_batch_size",
      "timing_points",
      "timing_batch",
      "timing_batches",
      "batch1_examples",
      "timing_repeats",
      "checkpoint_every",
    ):
      checks.positive_int(f"Config.{name}", getattr(self, name))
    if len(self.seeds) < 1 or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(
        f"Config.seeds must be distinct seeds; got seeds={self.seeds!r}"
      )
    if not self.r_values:
      raise ValueError("Config.r_values must hold at least one ratio")
    if self.warmup_steps >= self.steps:
      raise ValueError(
        f"Config.warmup_steps={self.warmup_steps} must be "
        f"below steps={self.steps}"
      )

  def split_args(self) -> types.SimpleNamespace:
    """What `vision_common.splits.load_splits` reads (keys the cache)."""
    return types.SimpleNamespace(
      num_val=self.num_val,
      max_train=self.max_train,
      max_test=self.max_test,
      seed=self.split_seed,
    )

  def latent_config(self, map_shapes, head_dim: int) -> LatentBranchConfig:
    return LatentBranchConfig(
      map_shapes=tuple(tuple(s) for s in map_shapes),
      head_dim=head_dim,
      num_classes=NUM_CLASSES,
      num_latents=self.num_latents,
      widths=self.widths,
      sa_depths=self.sa_depths,
      sa_heads=self.sa_heads,
      sa_widening=self.sa_widening,
      dwc_kernel=self.dwc_kernel,
    )


PRESETS = {
  "smoke": Config(
    resolution=64,
    num_latents=16,
    widths=(16, 32, 32, 64),
    sa_depths=(1, 1, 1, 1),
    sa_heads=(1, 2, 2, 4),
    num_val=500,
    max_train=1000,
    max_test=500,
    seeds=(0, 1),
    batch_size=64,
    steps=80,
    warmup_steps=10,
    checkpoint_every=80,
    r_values=(0.25, 0.5, 1.0, 2.0, 4.0),
    timing_points=1,
    timing_batch=64,
    buckets=(32,),
    batch1_examples=2,
    timing_repeats=1,
  ),
  "cpu": Config(),
  "paper": Config(
    resolution=224,
    num_latents=128,
    widths=(64, 96, 128, 192),
    sa_depths=(3, 3, 9, 9),
    sa_heads=(1, 2, 4, 8),
    dwc_kernel=7,
    seeds=(0, 1, 2),
    batch_size=1024,
    steps=13_200,
    warmup_steps=880,
    learning_rate=1e-3,
    label_smoothing=0.1,
    checkpoint_every=1000,
    timing_points=5,
    timing_batches=8,
    batch1_examples=64,
    timing_repeats=5,
  ),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class JointConfig:
  """One joint run's settings (both models share them; the feature branch
  is trained with the latent branch, z2x feeding back into it).

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


JOINT_PRESETS = {
  "joint_smoke": JointConfig(
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
  "joint_cpu": JointConfig(),
  "joint_paper": JointConfig(
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


def get_config(preset: str = "cpu", **overrides) -> Config | JointConfig:
  """The named preset (headline or joint_*) with `overrides` applied."""
  presets = {**PRESETS, **JOINT_PRESETS}
  checks.one_of("preset", preset, sorted(presets))
  return dataclasses.replace(presets[preset], **overrides)
