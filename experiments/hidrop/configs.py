"""Presets for `python -m experiments.hidrop`.

  python -m experiments.hidrop --preset smoke --out /tmp/hidrop_smoke
  python -m experiments.hidrop --preset cpu --out runs/hidrop_cpu
  python -m experiments.hidrop --preset cpu --dataset cifar --data-dir DIR
  python -m experiments.hidrop --preset paper --model-dir /path/llava-1.5-7b-hf

`smoke` proves the pipeline end to end in about a minute and a half on 2
cores: a tiny LLaVA trained a few steps per method on rendered shapes at
32 px.
`cpu` is the small reproduction: a LLaVA-style model trained from scratch
per method (pruning active during training, as HiDrop does) on 32 px
rendered shapes (2 x 2 grid, up to 2 objects), patch 4 -> 64 vision tokens,
an 8-layer d=128 decoder, so the HiDrop schedules scale to 8 layers (Tok64:
injection at layer 2, exit at layer 6). The speed targets are measured at
256 vision tokens by `benchmarks/token_pruning.py` (same decoder, 64 px).
`paper` holds LLaVA-1.5-7B (CLIP ViT-L/14-336, 576 tokens, Vicuna-7B's 32
layers) with the released Tok64 schedule, initialised from a Hugging Face folder
(`--model-dir`); it needs an accelerator with room for a 7B fine-tune.

With `--dataset cifar` and no CIFAR-10 in the data dir, the subset bundled
with jaxexit is used: `train_examples` / `test_examples` above 5,000 / 1,000
use the whole subset, and the run prints so.
"""

import dataclasses

from jaxexit import checks
from jaxexit.data import ShapesVQAConfig, VQAVocab
from jaxexit.models.clip_vision import ClipVisionConfig
from jaxexit.models.llama import LlamaConfig
from jaxexit.models.llava import LLAVA_CONFIGS, LlavaConfig
from jaxexit.pruning import SCHEDULES

METHODS = ("full", "hidrop", "pyramiddrop", "fastv")
DATASETS = ("shapes", "cifar")
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
    model: the LLaVA sizes; `model.vision.image_size` is the image side.
    shapes: the rendered VQA set (`dataset="shapes"`); its image size must
      equal the model's.
    hidrop_schedules: HiDrop schedule names (`--schedule`).
    train_examples, test_examples: examples drawn per split (CIFAR: at
      most the split's size).
    steps, batch_size, learning_rate, warmup_steps: training per method
      (AdamW, warmup then cosine decay, gradient clipping at 1).
    eval_batch: examples per evaluation call.
    timing_batch: examples per timed training step / prefill.
    timing_warmup, timing_repeats: untimed / timed side-by-side rounds.
    seed: data order and initialisation (shared by all methods).
  """

  model: LlavaConfig
  shapes: ShapesVQAConfig
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
    if self.shapes.image_size != self.model.vision.image_size:
      raise ValueError(
        f"shapes.image_size={self.shapes.image_size} must equal the "
        f"model's vision.image_size={self.model.vision.image_size}"
      )
    if self.batch_size > self.train_examples:
      raise ValueError(
        f"Config.batch_size={self.batch_size} exceeds "
        f"train_examples={self.train_examples}"
      )
    if self.warmup_steps >= self.steps:
      raise ValueError(
        f"Config.warmup_steps={self.warmup_steps} must be < steps={self.steps}"
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


PRESETS = {
  "smoke": Config(
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
  ),
  "cpu": Config(
    # 32 px, patch 4 -> 64 vision tokens, an 8-layer d=128 decoder. Probes
    # on 2 cores (full model, 600 steps, lr 2e-3): at 64 px / 256 tokens
    # (the benchmark's size) and at grid 3 x 3 with 3 small objects no
    # method got above chance within a CPU budget (250-600 steps);
    # 2 x 2 scenes with 2 large objects learned the colour questions
    # (0.31 vs 1/7 chance). A full step at batch 32 is ~0.3 s here, so
    # every method trains 1500 steps in about 20 minutes in all.
    model=_word_llava(
      image_size=32,
      patch_size=4,
      vision_width=96,
      vision_layers=2,
      d_model=128,
      num_layers=8,
      num_heads=4,
      mlp_hidden=384,
    ),
    shapes=ShapesVQAConfig(
      image_size=32, grid=2, max_objects=2, object_scale=0.3
    ),
    hidrop_schedules=("tok64",),
    steps=1500,
    learning_rate=2e-3,
    warmup_steps=50,
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


# The fixed size `benchmarks/token_pruning.py` times (untrained): 64 px,
# patch 4 -> 256 vision tokens (the "576-like" count scaled to the model),
# the `cpu` decoder.
BENCHMARK = dataclasses.replace(
  PRESETS["cpu"],
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
)


def get_config(preset: str = "cpu", **overrides) -> Config:
  """The named preset with `overrides` applied."""
  if preset not in PRESETS:
    raise ValueError(
      f"unknown preset={preset!r}; expected one of {sorted(PRESETS)}"
    )
  return dataclasses.replace(PRESETS[preset], **overrides)
