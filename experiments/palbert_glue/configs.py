"""Configs for `python -m experiments.palbert_glue` (foundation demo).

Until the PALBERT issue lands, this experiment demonstrates the foundation on
real SST-2: a small encoder with an exit after every layer, trained with the
shared loop on the PABEE-weighted exit loss, evaluated with several exit rules
in the three execution modes.

  python -m experiments.palbert_glue                       # preset "smoke"
  python -m experiments.palbert_glue --preset cpu --out runs/demo_cpu
"""

import dataclasses

from jaxexit.nn.encoder import EncoderConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoConfig:
  """Everything one run needs."""

  task: str = "sst2"
  model: EncoderConfig
  train_steps: int
  batch_size: int = 32
  learning_rate: float = 1e-3
  batch1_examples: int = 32         # examples timed one at a time
  timing_batches: int | None = None  # batches of 32 timed (None: all dev)
  checkpoint_every: int = 50
  seed: int = 0
  static_depths: tuple[int, ...] = (1, 2, 3, 4, 5)
  max_softmax_thresholds: tuple[float, ...] = (0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
  entropy_thresholds: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
  patiences: tuple[int, ...] = (1, 2, 3, 4)
  timing_repeats: int = 5


def get_config(preset: str = "smoke") -> DemoConfig:
  """The named preset: "smoke" (about a minute on 2 cores) or "cpu"."""
  if preset == "smoke":
    return DemoConfig(
        model=EncoderConfig(num_layers=6, d_model=64, num_heads=4, d_ff=128,
                            vocab_size=8192, max_len=48, num_classes=2),
        train_steps=150, batch1_examples=16, timing_batches=8,
        static_depths=(2, 4),
        max_softmax_thresholds=(0.6, 0.8, 0.95),
        entropy_thresholds=(0.3, 0.5, 0.6), patiences=(1, 2, 3),
        timing_repeats=3)
  if preset == "cpu":
    return DemoConfig(
        model=EncoderConfig(num_layers=6, d_model=128, num_heads=4, d_ff=512,
                            vocab_size=16384, max_len=64, num_classes=2),
        train_steps=2000, batch1_examples=64, checkpoint_every=200)
  raise ValueError(f"unknown preset={preset!r}; expected 'smoke' or 'cpu'")
