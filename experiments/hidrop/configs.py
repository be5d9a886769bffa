"""Presets for `python -m experiments.hidrop`.

  python -m experiments.hidrop --preset smoke --out /tmp/hidrop_smoke
  python -m experiments.hidrop --preset cpu --out runs/hidrop_cpu
  python -m experiments.hidrop --preset cpu --dataset cifar --data-dir DIR
  python -m experiments.hidrop --preset paper --model-dir /path/llava-1.5-7b-hf

`cpu` is the headline: a LLaVA-style model whose vision tokens are the
frozen ImageNet EfficientNet-Lite0 stride-16 map (`stage2`, 112 channels) of
the scene rendered at 64 px and resized to 128 px: an 8 x 8 grid, 64 vision
tokens, cached once per split (`jaxexit.models.efficientnet_features`). The
projector (LayerNorm, 2-layer GELU MLP, learned position table) and an
8-layer Llama decoder are trained per method with its pruning active (as
HiDrop does), over 3 seeds (initialisation and data order), so the HiDrop
schedules scale to 8 layers (Tok64: injection at layer 2, exit at 6).
`smoke` is the same pipeline at toy size with its own (small) feature pass,
two seeds so every interval is defined.
`paper` holds LLaVA-1.5-7B (CLIP ViT-L/14-336, 576 tokens, Vicuna-7B's 32
layers) with the released Tok64 schedule, initialised from a Hugging Face
folder (`--model-dir`); it needs an accelerator with room for a 7B
fine-tune, prints its per-device memory plan and refuses a mesh that
cannot hold it, and prompts in LLaVA's tokens (`paper.py`). The
from-scratch CLIP path (`vision="clip"`) stays for `paper` and for
`BENCHMARK`, the 256-token model `benchmarks/token_pruning.py` times
(vision tower included).

With `--dataset cifar` and no CIFAR-10 in the data dir, the subset bundled
with jaxexit is used: `train_examples` / `test_examples` above 5,000 / 1,000
use the whole subset, and the run prints so.
"""

import dataclasses

from jaxexit import checks
from jaxexit.data import ShapesVQAConfig, VQAVocab
from jaxexit.models.clip_vision import ClipVisionConfig
from jaxexit.models.llama import LlamaConfig
from jaxexit.models.efficientnet_features import check_resolution
from jaxexit.models.feature_llava import FeatureLlavaConfig
from jaxexit.models.llava import LLAVA_CONFIGS, LlavaConfig
from jaxexit.pruning import SCHEDULES

METHODS = ("full", "hidrop", "pyramiddrop", "fastv")
DATASETS = ("shapes", "cifar")
# "clip": the LLaVA CLIP tower, trained from scratch with the rest (`paper`
# and the speed benchmark); "efficientnet_lite0": frozen ImageNet features,
# cached once per split (`smoke`, `cpu`).
VISIONS = ("clip", "efficientnet_lite0")
# EfficientNet-Lite0 maps the feature path can take: (stride, channels).
LITE0_MAPS = {"stage1": (8, 40), "stage2": (16, 112)}
HIDROP_SCHEDULES = tuple(SCHEDULES["hidrop"])
# The schedule of each baseline (`jaxexit.pruning.SCHEDULES` names).
BASELINE_SCHEDULES = {
  "full": "full",
  "pyramiddrop": "s4_r0.5",
  "fastv": "k2_r0.5",
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  """One run's settings (every method trains with the same ones).

  Attributes:
    model: the LLaVA sizes: a `LlavaConfig` (vision "clip";
      `model.vision.image_size` is the image side) or a
      `FeatureLlavaConfig` (vision "efficientnet_lite0"; its grid and
      feature_dim are those of `feature_map` at `feature_resolution`).
    shapes: the rendered VQA set (`dataset="shapes"`); with "clip" its image
      size must equal the model's; with features it is resized to
      `feature_resolution` by the backbone pass.
    vision: one of `VISIONS`.
    feature_resolution: backbone input side (features only).
    feature_map: a key of `LITE0_MAPS` (features only).
    standardize_features: standardise each feature channel with the
      training split's mean and std before the model (features only; the
      model's own LayerNorm over C is then off). Measured: with it and
      lr 1e-3 the `cpu` decoder learns colour, count and existence; with
      the per-token LayerNorm at lr 3e-3 it learned none (README).
    hidrop_schedules: HiDrop schedule names (`--schedule`).
    train_examples, test_examples: examples drawn per split (CIFAR: at
      most the split's size).
    steps, batch_size, learning_rate, warmup_steps: training per method
      (AdamW, warmup then cosine decay, gradient clipping at 1).
    eval_batch: examples per evaluation call.
    timing_batch: examples per timed training step / prefill.
    timing_warmup, timing_repeats: untimed / timed side-by-side rounds.
    seeds: the training seeds (initialisation and data order; the data
      set itself is the same for every seed).
    seed: the seed of the run in progress (`__main__` sets it from
      `seeds`; shared by all methods).
  """

  model: LlavaConfig | FeatureLlavaConfig
  shapes: ShapesVQAConfig
  vision: str = "clip"
  feature_resolution: int = 128
  feature_map: str = "stage2"
  standardize_features: bool = False
  hidrop_schedules: tuple[str, ...] = ("tok64",)
  train_examples: int = 20000
  test_examples: int = 2000
  steps: int = 600
  batch_size: int = 32
  learning_rate: float = 1e-3
  warmup_steps: int = 50
  eval_batch: int = 100
  timing_batch: int = 32
  timing_warmup: int = 1
  timing_repeats: int = 5
  seeds: tuple[int, ...] = (0,)
  seed: int = 0

  def __post_init__(self):
    for name in (
      "train_examples",
      "test_examples",
      "steps",
      "batch_size",
      "eval_batch",
      "timing_batch",
      "timing_repeats",
    ):
      checks.positive_int(f"Config.{name}", getattr(self, name))
    checks.positive_int("Config.timing_warmup", self.timing_warmup, minimum=0)
    if not self.hidrop_schedules:
      raise ValueError(
        "Config.hidrop_schedules must name at least one of "
        f"{list(HIDROP_SCHEDULES)}; got ()"
      )
    for name in self.hidrop_schedules:
      checks.one_of("Config.hidrop_schedules", name, HIDROP_SCHEDULES)
    if not self.seeds:
      raise ValueError("Config.seeds must hold at least one seed; got ()")
    checks.one_of("Config.vision", self.vision, VISIONS)
    if self.vision == "clip":
      self._check_clip()
    else:
      self._check_features()
    if self.batch_size > self.train_examples:
      raise ValueError(
        f"Config.batch_size={self.batch_size} exceeds "
        f"train_examples={self.train_examples}"
      )
    if self.warmup_steps >= self.steps:
      raise ValueError(
        f"Config.warmup_steps={self.warmup_steps} must be < steps={self.steps}"
      )

  def _check_clip(self):
    if not isinstance(self.model, LlavaConfig):
      raise ValueError(
        f"Config.vision='clip' needs a LlavaConfig model; got "
        f"{type(self.model).__name__}"
      )
    if self.shapes.image_size != self.model.vision.image_size:
      raise ValueError(
        f"shapes.image_size={self.shapes.image_size} must equal the "
        f"model's vision.image_size={self.model.vision.image_size}"
      )

  def _check_features(self):
    if not isinstance(self.model, FeatureLlavaConfig):
      raise ValueError(
        f"Config.vision={self.vision!r} needs a FeatureLlavaConfig model; "
        f"got {type(self.model).__name__}"
      )
    check_resolution(self.feature_resolution)
    checks.one_of("Config.feature_map", self.feature_map, sorted(LITE0_MAPS))
    stride, channels = LITE0_MAPS[self.feature_map]
    grid = self.feature_resolution // stride
    if (self.model.grid, self.model.feature_dim) != (grid, channels):
      raise ValueError(
        f"feature_map={self.feature_map!r} at feature_resolution="
        f"{self.feature_resolution} is a {grid} x {grid} x {channels} map; "
        f"the model has grid={self.model.grid}, feature_dim="
        f"{self.model.feature_dim}"
      )

  @property
  def num_vision(self) -> int:
    """Nv, vision tokens per image."""
    return self.model.num_image_tokens

  def schedule_names(self, method: str) -> tuple[str, ...]:
    """The `SCHEDULES[method]` names this run trains."""
    checks.one_of("method", method, METHODS)
    if method == "hidrop":
      return self.hidrop_schedules
    return (BASELINE_SCHEDULES[method],)


def _word_llava(
  *,
  image_size: int,
  patch_size: int,
  vision_width: int,
  vision_layers: int,
  d_model: int,
  num_layers: int,
  num_heads: int,
  mlp_hidden: int,
) -> LlavaConfig:
  """A from-scratch LLaVA over the word vocabulary of the VQA sets.

  The vision tower runs every block (feature layer -1): a small tower has no
  block to spare.
  """
  vocab = VQAVocab()
  return LlavaConfig(
    vision=ClipVisionConfig(
      image_size=image_size,
      patch_size=patch_size,
      width=vision_width,
      num_layers=vision_layers,
      num_heads=4,
      mlp_dim=2 * vision_width,
    ),
    text=LlamaConfig(
      vocab_size=len(vocab),
      d_model=d_model,
      num_layers=num_layers,
      num_heads=num_heads,
      mlp_hidden=mlp_hidden,
      max_position=1024,
    ),
    vision_feature_layer=-1,
    image_token_id=vocab.image_id,
  )


def _feature_llava(
  *,
  resolution: int,
  feature_map: str,
  d_model: int,
  num_layers: int,
  num_heads: int,
  mlp_hidden: int,
  feature_norm: bool = True,
) -> FeatureLlavaConfig:
  """A LLaVA over frozen Lite0 features and the VQA sets' word vocabulary:
  a trained projector (+ position table) and a from-scratch Llama."""
  vocab = VQAVocab()
  stride, channels = LITE0_MAPS[feature_map]
  return FeatureLlavaConfig(
    text=LlamaConfig(
      vocab_size=len(vocab),
      d_model=d_model,
      num_layers=num_layers,
      num_heads=num_heads,
      mlp_hidden=mlp_hidden,
      max_position=1024,
    ),
    feature_dim=channels,
    grid=resolution // stride,
    feature_norm=feature_norm,
    image_token_id=vocab.image_id,
  )


# The shared scene set of `smoke` and `cpu`: rendered at 64 px, resized to
# 128 px for Lite0 (stage2: an 8 x 8 map, 64 vision tokens).
_SCENES = ShapesVQAConfig(
  image_size=64, grid=2, max_objects=2, object_scale=0.3
)

PRESETS = {
  "smoke": Config(
    model=_feature_llava(
      resolution=128,
      feature_map="stage2",
      d_model=32,
      num_layers=4,
      num_heads=4,
      mlp_hidden=64,
      feature_norm=False,
    ),
    shapes=_SCENES,
    vision="efficientnet_lite0",
    standardize_features=True,
    train_examples=512,
    test_examples=128,
    steps=60,
    batch_size=16,
    learning_rate=3e-3,
    warmup_steps=5,
    eval_batch=64,
    timing_batch=16,
    timing_warmup=1,
    timing_repeats=1,
    seeds=(0, 1),
  ),
  "cpu": Config(
    # The learnability probes (full model, README "What it took"): 3000
    # steps at lr 1e-3 on standardised features learn colour, count and
    # existence at d=128 x 4 layers (d=64 x 8 layers: not existence);
    # ~0.3 s per full-model step with two jobs on the 2 cores.
    model=_feature_llava(
      resolution=128,
      feature_map="stage2",
      d_model=128,
      num_layers=4,
      num_heads=4,
      mlp_hidden=384,
      feature_norm=False,
    ),
    shapes=_SCENES,
    vision="efficientnet_lite0",
    standardize_features=True,
    hidrop_schedules=("tok64",),
    steps=3000,
    learning_rate=1e-3,
    warmup_steps=50,
    seeds=(0, 1, 2),
  ),
  "paper": Config(
    model=LLAVA_CONFIGS["llava-1.5-7b"],
    shapes=ShapesVQAConfig(image_size=336),
    hidrop_schedules=HIDROP_SCHEDULES,
    train_examples=50000,
    test_examples=5000,
    steps=3000,
    batch_size=16,
    learning_rate=2e-5,
    warmup_steps=90,
    eval_batch=16,
    timing_batch=8,
    timing_repeats=5,
  ),
}


# The fixed size `benchmarks/token_pruning.py` times (untrained), with the
# from-scratch CLIP tower: 64 px, patch 4 -> 256 vision tokens (the
# "576-like" count scaled to the model), the `cpu` decoder.
BENCHMARK = Config(
  model=_word_llava(
    image_size=64,
    patch_size=4,
    vision_width=96,
    vision_layers=2,
    d_model=128,
    num_layers=8,
    num_heads=4,
    mlp_hidden=384,
  ),
  shapes=ShapesVQAConfig(image_size=64),
  hidrop_schedules=("tok64",),
  steps=1500,
  learning_rate=2e-3,
  warmup_steps=50,
)


# The old `smoke` at toy size with the from-scratch CLIP tower: the CLIP
# path's quick checks (benchmarks/token_pruning.py's test).
SMOKE_CLIP = Config(
  model=_word_llava(
    image_size=32,
    patch_size=4,
    vision_width=32,
    vision_layers=1,
    d_model=32,
    num_layers=4,
    num_heads=4,
    mlp_hidden=64,
  ),
  shapes=ShapesVQAConfig(
    image_size=32, grid=3, max_objects=3, object_scale=0.16
  ),
  train_examples=256,
  test_examples=64,
  steps=6,
  batch_size=8,
  warmup_steps=1,
  eval_batch=32,
  timing_batch=32,
  timing_warmup=1,
  timing_repeats=1,
)


def get_config(preset: str = "cpu", **overrides) -> Config:
  """The named preset with `overrides` applied."""
  if preset not in PRESETS:
    raise ValueError(
      f"unknown preset={preset!r}; expected one of {sorted(PRESETS)}"
    )
  return dataclasses.replace(PRESETS[preset], **overrides)
