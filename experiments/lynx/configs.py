"""Presets for `python -m experiments.lynx`.

  python -m experiments.lynx --preset smoke --out /tmp/lynx_smoke
  python -m experiments.lynx --preset cpu --out runs/lynx_cpu
  python -m experiments.lynx --preset cpu --model smollm2 \\
      --train-data gsm8k --eval-data gsm8k,csqa
  python -m experiments.lynx --preset paper --model-dir /path/R1-Distill \\
      --eval-data gsm8k,math500,aime2024,csqa

`cpu` (the headline) trains the synthetic reasoning LM
(`jaxexit.data.synthetic_reasoning`: arithmetic word problems whose traces
re-check a settled answer) from scratch, rolls it out greedily on 600
problems, labels every cue event by forcing an exit there, and per seed
trains the probe on half of those problems, calibrates on the other half
and runs LYNX online on 300 held-out problems for every δ. `--model
smollm2` runs the same pipeline on SmolLM2-135M-Instruct (GSM8K / CSQA):
it is not a reasoning model, so its records are mainly cue statistics.
`smoke` is the synthetic pipeline at toy size. `paper` is
DeepSeek-R1-Distill-Qwen-1.5B (`--model-dir`, a Hugging Face folder) with
the spec's layers 9, 16, 28, trained on GSM8K-train events (the paper's
MATH train is not staged); it needs an accelerator.

Seeds vary the probe's initialisation, its training/calibration split of
the rollout problems and its validation split; the LM is trained once per
run (its seed is `lm_seed`).
"""

import dataclasses

from jaxexit import checks
from jaxexit.data.synthetic_reasoning import (
  SyntheticReasoningConfig,
  WordTokenizer,
)
from jaxexit.models.llama import LlamaConfig

MODELS = ("synthetic", "smollm2", "qwen2")
EVAL_SETS = ("synthetic", "gsm8k", "math500", "aime2024", "csqa")
TRAIN_SETS = ("synthetic", "gsm8k", "csqa")  # sets with a train split
DELTAS = (0.01, 0.02, 0.05, 0.1, 0.2)


def scaled_layers(num_layers: int) -> tuple[int, ...]:
  """The spec's R1-Distill choice (9, 16 and the last of 28 hidden-state
  indices) scaled to `num_layers` blocks, duplicates removed."""
  checks.positive_int("num_layers", num_layers)
  picks = [max(1, round(num_layers * k / 28)) for k in (9, 16)]
  return tuple(sorted({*picks, num_layers}))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  """One run's settings.

  Attributes:
    model: one of `MODELS`.
    lm: the synthetic LM's sizes (model "synthetic").
    problems: how synthetic problems are drawn.
    lm_problems: synthetic problems the LM is trained on.
    lm_steps, lm_batch, lm_seq_len, lm_learning_rate, lm_seed: its
      training (AdamW, warmup + cosine; `train_causal_lm`).
    train_data: where probe-training and calibration rollouts come from.
    probe_problems: rollouts for the probe and calibration (split in half
      per seed).
    eval_data: the eval sets.
    eval_problems: problems per eval set (the first ones; at most the set).
    max_reason: reasoning tokens at most per rollout.
    answer_len: K, answer tokens after the exit cue.
    deltas: the δ sweep.
    seeds: probe seeds.
    splits: random calibration/test splits of the guarantee check.
    batch: rows per generation / feature call.
    slots: decoding slots of the refill throughput comparison.
  """

  model: str = "synthetic"
  lm: LlamaConfig | None = None
  problems: SyntheticReasoningConfig = SyntheticReasoningConfig()
  lm_problems: int = 20000
  lm_steps: int = 2000
  lm_batch: int = 32
  lm_seq_len: int = 128
  lm_learning_rate: float = 3e-3
  lm_seed: int = 0
  train_data: str = "synthetic"
  probe_problems: int = 600
  eval_data: tuple[str, ...] = ("synthetic",)
  eval_problems: int = 300
  max_reason: int = 200
  answer_len: int = 4
  deltas: tuple[float, ...] = DELTAS
  seeds: tuple[int, ...] = (0, 1, 2)
  splits: int = 100
  batch: int = 64
  slots: int = 16

  def __post_init__(self):
    checks.one_of("Config.model", self.model, MODELS)
    checks.one_of("Config.train_data", self.train_data, TRAIN_SETS)
    for name in self.eval_data:
      checks.one_of("Config.eval_data", name, EVAL_SETS)
    if not self.eval_data:
      raise ValueError("Config.eval_data must name at least one eval set")
    if self.model == "synthetic" and self.lm is None:
      raise ValueError("Config.model='synthetic' needs Config.lm sizes")
    sets = {self.train_data, *self.eval_data}
    mixed = (
      sets != {"synthetic"}
      if self.model == "synthetic"
      else ("synthetic" in sets)
    )
    if mixed:
      raise ValueError(
        "the synthetic problems and the synthetic LM go together (its "
        f"word vocabulary reads nothing else); got model={self.model!r}, "
        f"train_data={self.train_data!r}, eval_data={self.eval_data}"
      )
    for name in (
      "lm_problems",
      "lm_steps",
      "lm_batch",
      "lm_seq_len",
      "probe_problems",
      "eval_problems",
      "max_reason",
      "answer_len",
      "splits",
      "batch",
      "slots",
    ):
      checks.positive_int(f"Config.{name}", getattr(self, name))
    if not self.deltas:
      raise ValueError("Config.deltas must hold at least one δ")
    for d in self.deltas:
      checks.in_range(
        "Config.deltas", d, 0.0, 1.0, low_open=True, high_open=True
      )
    if not self.seeds:
      raise ValueError("Config.seeds must hold at least one seed")
    if self.probe_problems < 4:
      raise ValueError(
        f"Config.probe_problems={self.probe_problems} must be >= 4 (half "
        "train the probe, half calibrate)"
      )


def _synthetic_lm(
  d: int, layers: int, heads: int, problems: SyntheticReasoningConfig
) -> LlamaConfig:
  return LlamaConfig(
    vocab_size=WordTokenizer(problems.max_value).vocab_size,
    d_model=d,
    num_layers=layers,
    num_heads=heads,
    mlp_hidden=3 * d,
    max_position=512,
    tie_embeddings=True,
  )


_SMOKE_PROBLEMS = SyntheticReasoningConfig(
  min_steps=2, max_steps=4, max_value=16, max_operand=5, max_checks=1
)
_CPU_PROBLEMS = SyntheticReasoningConfig()
PRESETS = {
  "smoke": Config(
    lm=_synthetic_lm(64, 2, 2, _SMOKE_PROBLEMS),
    problems=_SMOKE_PROBLEMS,
    lm_problems=4000,
    lm_steps=400,
    lm_batch=16,
    lm_seq_len=128,
    probe_problems=64,
    eval_problems=32,
    max_reason=96,
    deltas=(0.1, 0.2),
    seeds=(0, 1),
    splits=20,
    batch=32,
    slots=8,
  ),
  "cpu": Config(
    lm=_synthetic_lm(128, 4, 4, _CPU_PROBLEMS),
    problems=_CPU_PROBLEMS,
  ),
  "paper": Config(
    model="qwen2",
    # The paper trains on MATH train (not staged here); GSM8K train is the
    # staged training split that leaves every eval set held out.
    train_data="gsm8k",
    probe_problems=400,
    eval_data=("gsm8k", "math500", "aime2024", "csqa"),
    eval_problems=100000,
    max_reason=12048,
    answer_len=64,
    deltas=(0.01, 0.02, 0.03, 0.05, 0.1),
    batch=16,
    slots=16,
  ),
}


# `--model smollm2` on the smoke / cpu presets: SmolLM2 decodes ~100x
# slower than the synthetic LM here, so fewer, shorter rollouts (its
# records are cue statistics more than a test of the claim).
SMOLLM2 = {
  "smoke": dict(
    train_data="gsm8k",
    eval_data=("gsm8k",),
    probe_problems=8,
    eval_problems=4,
    max_reason=32,
    answer_len=8,
    batch=8,
    slots=4,
  ),
  "cpu": dict(
    train_data="gsm8k",
    eval_data=("gsm8k",),
    probe_problems=96,
    eval_problems=64,
    max_reason=256,
    answer_len=12,
    batch=32,
    slots=16,
  ),
}


def get_config(preset: str = "cpu", **overrides) -> Config:
  """The named preset with `overrides` applied (`--model smollm2` first
  takes `SMOLLM2[preset]`)."""
  checks.one_of("preset", preset, sorted(PRESETS))
  if overrides.get("model") == "smollm2" and preset in SMOLLM2:
    overrides = {**SMOLLM2[preset], **overrides}
  return dataclasses.replace(PRESETS[preset], **overrides)
