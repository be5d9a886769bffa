"""Presets for `python -m experiments.palbert_glue`.

  python -m experiments.palbert_glue                      # cpu preset, SST-2
  python -m experiments.palbert_glue --preset smoke --task sst2 --method all \
      --out /tmp/smoke
  python -m experiments.palbert_glue --task rte --out runs/rte_cpu
  python -m experiments.palbert_glue --preset paper --model albert-base-v2 \
      --task rte

`smoke` proves the pipeline end to end in a few minutes on 2 cores (real
MiniLM weights, real data, a few steps, 2 seeds). `cpu` is the main job: the
offline all-MiniLM-L6-v2, every method jointly fine-tuned from the same
weights for 3 seeds on a 1600-example training subset (50 steps), batches
bucketed by length (training 16 / 32 tokens, longer phrases truncated: 98 %
of SST-2's training phrases fit in 32, their median is 10; evaluation 16 /
32 / 64, nothing truncated on SST-2 dev), the
operating point of each method chosen on a held-out part of the training
split, dev scored for every seed. The fresh exit heads get a larger learning
rate (1e-3) than the pretrained encoder (1e-4), as there are few steps.
`paper` holds PALBERT's hyper-parameters (encoder_exits.md §3.4):
ALBERT-base, Adam lr 1e-5 without decay or schedule, batch 32, max length
128, up to 25 epochs, β = 0.5, λ_p = 0.1 (`prior="paper"`: at 12 layers the
depth-matched prior is the same), q = 0.5, 5 seeds; it needs a GPU/TPU and
the weights.
"""

import dataclasses
import math

from jaxexit import checks, exits


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  """One run's settings (per task; every method and seed uses them)."""

  model: str = "minilm-l6"
  max_len: int = 64  # evaluation (dev, held-out)
  bucket_widths: tuple[int, ...] = (16, 32, 64)  # evaluation batches
  train_bucket_widths: tuple[int, ...] = (16, 32)  # training batches;
  # longer training examples are truncated to the last width
  batch_size: int = 32
  eval_batch_size: int = 64
  epochs: float = 1.0
  max_train_examples: int | None = None  # None: the whole train split
  heldout_examples: int = 1000  # from train, never trained on
  max_eval_examples: int | None = None  # None: the whole dev split
  learning_rate: float = 1e-4  # the pretrained encoder
  heads_learning_rate: float = 1e-3  # the fresh exit heads
  halting_learning_rate: float = 1e-3  # PALBERT's separate "lambda lr"
  weight_decay: float = 0.0
  prior: str = "depth_matched"  # or "paper" (λ_p = 0.1)
  seeds: tuple[int, ...] = (42, 43, 44)
  tolerance: float = 0.01  # held-out score loss allowed
  checkpoint_every: int = 50
  timing_seeds: int = 1  # seeds whose speed is measured
  timing_batches: int = 4  # batches of `batch_size` timed
  batch1_examples: int = 16  # examples timed one at a time
  timing_repeats: int = 3

  def __post_init__(self):
    checks.positive_int("max_len", self.max_len)
    checks.positive_int("batch_size", self.batch_size)
    checks.positive_int("eval_batch_size", self.eval_batch_size)
    checks.positive_int("heldout_examples", self.heldout_examples)
    if self.max_train_examples is not None:
      checks.positive_int("max_train_examples", self.max_train_examples)
    checks.positive_int("timing_seeds", self.timing_seeds, minimum=0)
    if not (
      isinstance(self.epochs, (int, float))
      and math.isfinite(self.epochs)
      and self.epochs > 0
    ):
      raise ValueError(
        f"epochs must be a finite number > 0; got epochs={self.epochs!r}"
      )
    if len(self.seeds) < 1:
      raise ValueError(f"at least one seed is needed; got seeds={self.seeds}")
    for s in self.seeds:
      checks.positive_int("seed", s, minimum=0)
    if len(set(self.seeds)) != len(self.seeds):
      raise ValueError(f"seeds must be distinct; got seeds={self.seeds}")
    checks.one_of("prior", self.prior, exits.PRIOR_SETTINGS)
    checks.in_range("tolerance", self.tolerance, 0.0, 1.0)
    for name in ("bucket_widths", "train_bucket_widths"):
      widths = getattr(self, name)
      if not widths or list(widths) != sorted(set(widths)):
        raise ValueError(f"{name} must increase strictly; got {name}={widths}")
    if self.bucket_widths[-1] < self.max_len:
      raise ValueError(
        f"the last of bucket_widths={self.bucket_widths} "
        f"must be >= max_len={self.max_len}"
      )


PRESETS = {
  "smoke": Config(
    max_len=24,
    bucket_widths=(24,),
    train_bucket_widths=(24,),
    batch_size=16,
    eval_batch_size=32,
    epochs=1.0,
    max_train_examples=256,
    heldout_examples=64,
    max_eval_examples=96,
    seeds=(42, 43),
    checkpoint_every=8,
    timing_batches=1,
    batch1_examples=2,
    timing_repeats=1,
  ),
  "cpu": Config(max_train_examples=1600),
  "paper": Config(
    model="albert-base-v2",
    max_len=128,
    bucket_widths=(32, 64, 128),
    train_bucket_widths=(32, 64, 128),
    batch_size=32,
    epochs=25.0,
    learning_rate=1e-5,
    heads_learning_rate=1e-5,
    halting_learning_rate=1e-5,
    prior="paper",
    seeds=(42, 43, 44, 45, 46),
    checkpoint_every=500,
    timing_batches=27,
    batch1_examples=277,
    timing_repeats=5,
  ),
}


def get_config(preset: str = "cpu", **overrides) -> Config:
  """The named preset with `overrides` applied."""
  checks.one_of("preset", preset, sorted(PRESETS))
  return dataclasses.replace(PRESETS[preset], **overrides)
