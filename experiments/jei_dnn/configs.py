"""Presets for `python -m experiments.jei_dnn`.

  python -m experiments.jei_dnn --preset smoke --out /tmp/jei_smoke
  python -m experiments.jei_dnn --preset cpu          # runs/jei_dnn_cpu
  python -m experiments.jei_dnn --preset paper --gammas 0.5,1,1.5

`smoke` proves the pipeline end to end on real CIFAR-10 in about a minute
on 2 cores (tiny ViT, small subsets, a few dozen steps). `cpu` is the small
reproduction on 2 cores (a 7-block ViT at 32 x 32 trained for a few
minutes). `paper` has JEI-DNN's sizes and schedule (§8.1, §8.4): a
T2T-ViT-7-sized backbone on 224 x 224 inputs (random crop with padding 28),
batch 64, IM warm-up ≈ 3 epochs, 15 epochs of alternation every 200
batches, SGD lr 0.01 → 2e-4, γ from 0.01 to 7. It trains the backbone from
scratch (the paper fine-tunes an ImageNet-pretrained T2T-ViT-7, which is not
available offline) and needs an accelerator.

When the data dir has no CIFAR-10, every preset runs on the subset bundled
with jaxexit (5,000 train / 1,000 test images): `cpu` and `paper` then hold
out 500 images instead of 5,000 and train on the other 4,500, and the run
prints so. With the full data the sizes above apply unchanged.
"""

import dataclasses

from jaxexit.exits.budgeted import DYN_PERCEIVER_R_VALUES
from jaxexit.methods.jei_dnn_train import JeiTrainConfig
from jaxexit.models.vit import VIT_CONFIGS

PAPER_GAMMAS = (
  0.01,
  0.05,
  0.1,
  0.2,
  0.3,
  0.5,
  0.7,
  1.0,
  1.5,
  2.0,
  3.0,
  5.0,
  7.0,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  """One run's settings.

  Attributes:
    vit: key of `VIT_CONFIGS` (images are resized to its `image_size`).
    num_val: held-out validation images carved from CIFAR-10 train.
    max_train: training images used (None: all 50000 − num_val).
    max_test: test images used (None: all 10000).
    batch_size: backbone batch size.
    steps: backbone updates (AdamW, warm-up + cosine).
    learning_rate: backbone peak learning rate.
    weight_decay: backbone AdamW weight decay.
    warmup_steps: backbone linear warm-up.
    crop_padding: random-crop padding at the model's input size.
    dropout: backbone dropout.
    checkpoint_every: backbone checkpoint interval.
    max_jei_train: cached training examples the IMs and gates see (None:
      all of `max_train`).
    jei: the IM/gate schedule.
    gammas: γ values, one JEI-DNN point each.
    r_values: geometric ratios of the max-softmax baseline.
    alpha: conformal miscoverage.
    eval_batch_size: batch for feature caching and compacted timing.
    timing_batches: test batches timed per record (compacted).
    batch1_examples: test examples timed one by one (early_stop).
    timing_repeats: timed rounds per measurement.
    seed: backbone seed (init, data order, augmentation).
  """

  vit: str = "cifar_small"
  num_val: int = 5000
  max_train: int | None = None
  max_test: int | None = None
  batch_size: int = 128
  steps: int = 1000
  learning_rate: float = 1e-3
  weight_decay: float = 0.05
  warmup_steps: int = 100
  crop_padding: int = 4
  dropout: float = 0.0
  checkpoint_every: int = 200
  max_jei_train: int | None = None
  jei: JeiTrainConfig = JeiTrainConfig()
  gammas: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
  r_values: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)
  alpha: float = 0.05
  eval_batch_size: int = 256
  timing_batches: int = 2
  batch1_examples: int = 8
  timing_repeats: int = 2
  seed: int = 0

  def __post_init__(self):
    if self.vit not in VIT_CONFIGS:
      raise ValueError(
        f"unknown Config.vit={self.vit!r}; expected one of "
        f"{sorted(VIT_CONFIGS)}"
      )
    if not self.gammas or min(self.gammas) < 0:
      raise ValueError(
        f"Config.gammas must be non-empty and every gamma >= "
        f"0; got gammas={self.gammas!r}"
      )


PRESETS = {
  "smoke": Config(
    vit="tiny",
    num_val=500,
    max_train=2000,
    max_test=1000,
    batch_size=64,
    steps=30,
    warmup_steps=5,
    checkpoint_every=10,
    max_jei_train=2000,
    jei=JeiTrainConfig(
      batch_size=64, warmup_steps=40, steps=80, alternate_every=20
    ),
    gammas=(0.1, 1.0),
    r_values=(0.5, 1.0, 2.0),
    eval_batch_size=128,
    timing_batches=1,
    batch1_examples=2,
    timing_repeats=1,
  ),
  "cpu": Config(
    vit="cifar_small",
    steps=2000,
    batch_size=64,
    warmup_steps=100,
    learning_rate=1e-3,
    checkpoint_every=250,
    max_jei_train=10000,
    jei=JeiTrainConfig(
      batch_size=64, warmup_steps=600, steps=1600, alternate_every=200
    ),
    eval_batch_size=256,
    timing_batches=1,
    batch1_examples=8,
  ),
  "paper": Config(
    vit="t2t_vit_7_like",
    batch_size=64,
    steps=60 * 703,
    learning_rate=1e-3,
    warmup_steps=2000,
    crop_padding=28,
    dropout=0.1,
    checkpoint_every=2000,
    jei=JeiTrainConfig(
      batch_size=64, warmup_steps=3 * 703, steps=15 * 703, alternate_every=200
    ),
    gammas=PAPER_GAMMAS,
    r_values=DYN_PERCEIVER_R_VALUES,
    eval_batch_size=256,
    timing_batches=8,
    batch1_examples=64,
    timing_repeats=5,
  ),
}


def get_config(preset: str = "cpu", **overrides) -> Config:
  """The named preset with `overrides` applied."""
  if preset not in PRESETS:
    raise ValueError(
      f"unknown preset={preset!r}; expected one of {sorted(PRESETS)}"
    )
  return dataclasses.replace(PRESETS[preset], **overrides)
