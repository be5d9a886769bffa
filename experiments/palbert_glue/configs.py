"""Presets for `python -m experiments.palbert_glue`.

  python -m experiments.palbert_glue --preset smoke --task rte --method all --out /tmp/smoke
  python -m experiments.palbert_glue --preset cpu --task sst2 --method all --out runs/sst2_cpu
  python -m experiments.palbert_glue --preset paper --model albert-base-v2 --task rte --method palbert

`smoke` proves the pipeline end to end in about two minutes per task on 2
cores (real MiniLM weights, real data, a few dozen steps). `cpu` is the small
real reproduction on 2 cores (MiniLM-L6, a 4000-example training subset, one
epoch, 64 tokens); with so few steps the freshly initialised exit heads get
a larger learning rate (1e-3) than the pretrained encoder (5e-5).
`paper` holds PALBERT's hyper-parameters (encoder_exits.md §3.4): ALBERT-base,
Adam lr 1e-5 without decay or schedule, batch 32, max length 128, up to 25
epochs, β = 0.5, λ_p = 0.1, q = 0.5; it needs a GPU/TPU and the weights.
"""

import dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  """One run's settings (per task and method)."""

  model: str = "minilm-l6"
  max_len: int = 128
  batch_size: int = 32
  epochs: float = 1.0
  max_train_examples: int | None = None   # None: the whole train split
  max_eval_examples: int | None = None    # None: the whole dev split
  learning_rate: float = 5e-5             # the pretrained encoder
  heads_learning_rate: float = 1e-3       # the fresh exit heads
  halting_learning_rate: float = 1e-3     # PALBERT's separate "lambda lr"
  weight_decay: float = 0.0
  checkpoint_every: int = 100
  timing_batches: int = 8                 # batches of `batch_size` timed
  batch1_examples: int = 32               # examples timed one at a time
  timing_repeats: int = 3
  seed: int = 42


PRESETS = {
    "smoke": Config(max_len=64, batch_size=16, epochs=1.0,
                    max_train_examples=320, max_eval_examples=96,
                    checkpoint_every=10, timing_batches=2, batch1_examples=4,
                    timing_repeats=1),
    "cpu": Config(max_len=64, batch_size=32, epochs=1.0,
                  max_train_examples=4000, max_eval_examples=None,
                  checkpoint_every=25, timing_batches=8, batch1_examples=32),
    "paper": Config(model="albert-base-v2", max_len=128, batch_size=32,
                    epochs=25.0, learning_rate=1e-5,
                    heads_learning_rate=1e-5, halting_learning_rate=1e-5, checkpoint_every=500,
                    timing_batches=27, batch1_examples=277,
                    timing_repeats=5),
}


def get_config(preset: str = "cpu", **overrides) -> Config:
  """The named preset with `overrides` applied."""
  if preset not in PRESETS:
    raise ValueError(f"unknown preset={preset!r}; expected one of "
                     f"{sorted(PRESETS)}")
  return dataclasses.replace(PRESETS[preset], **overrides)
