"""Data, model and training of one method: the pieces `__main__` chains.

A VQA example is the prompt `[<bos> | N image tokens | question words,
<answer>, padding]`; the model is trained with cross-entropy on the answer
word at the `<answer>` position, which is also the query row of the
importance scores (`jaxexit.pruning.prompt`). Every method trains with the
same steps, data order and initialisation; only the vision schedule (and so
the pruning active during training) differs.
"""

import functools
import os
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments.hidrop.configs import Config
from jaxexit import train as train_lib
from jaxexit.data import (
  VQASet,
  load_cifar_vqa,
  make_shapes_vqa,
  resize,
  shuffled_batch_indices,
)
from jaxexit.models.efficientnet_features import lite_features
from jaxexit.models.feature_llava import FeatureLlavaLM
from jaxexit.models.llava import LlavaLM
from jaxexit.pruning import VisionSchedule, pruned_forward
from jaxexit.pruning.prompt import make_pruned_inputs, question_suffix
from jaxexit.typing import Array

Batch = dict[str, np.ndarray]


def load_split(
  cfg: Config, dataset: str, split: str, data_dir: str | os.PathLike | None
) -> VQASet:
  """The train or test `VQASet` of `dataset` ("shapes" or "cifar")."""
  num = cfg.train_examples if split == "train" else cfg.test_examples
  if dataset == "shapes":
    return make_shapes_vqa(cfg.shapes, num, split_seed=int(split != "train"))
  return load_cifar_vqa(
    split, seed=cfg.seed, num_examples=num, data_dir=data_dir
  )


def prompt_batch(vset: VQASet) -> Batch:
  """Host arrays of a whole set: images, prompt ids, answers, types."""
  vocab = vset.vocab
  suffix, lens = question_suffix(
    vset.question_ids,
    vset.question_lens,
    cue_id=vocab.sep_id,
    pad_id=vocab.pad_id,
  )
  return {
    "images": vset.images,
    "prefix": np.full((len(vset), 1), vocab.bos_id, np.int32),
    "suffix": suffix,
    "suffix_lens": lens,
    "answer": vset.answer_ids.astype(np.int32),
    "qtype": vset.question_types.astype(np.int32),
  }


def add_features(
  cfg: Config,
  batch: Batch,
  split: str,
  *,
  progress: bool | None = None,
) -> Batch:
  """`batch` with its images replaced by frozen backbone features.

  With `cfg.vision == "clip"` the batch is returned as is. Otherwise the
  images go once through the frozen EfficientNet-Lite0 at
  `cfg.feature_resolution` (cached on disk, keyed by the images' hash) and
  `batch["features"]` is the `cfg.feature_map` map, a float16 memmap
  [N, h, w, C].
  """
  if cfg.vision == "clip":
    return batch
  name = cfg.feature_map
  feats = lite_features(
    batch["images"],
    f"hidrop-{split}",
    variant=cfg.vision.rsplit("_", 1)[1],
    resolution=cfg.feature_resolution,
    outputs=(name,),
    progress=progress,
  )[name]
  out = {k: v for k, v in batch.items() if k != "images"}
  return out | {"features": feats}


def take(batch: Batch, idx) -> Batch:
  return {k: v[idx] for k, v in batch.items()}


def pixels(images: Array, size: int) -> Array:
  """uint8 [B, H, W, 3] -> float32 in [-1, 1] at `size` x `size`."""
  if images.shape[1] != size:
    images = resize(images, size)
  return images.astype(jnp.float32) / 127.5 - 1.0


def answer_logits(
  model: LlavaLM, batch, schedule: VisionSchedule, *, impl: str
) -> Array:
  """[B, V] float32 logits at the `<answer>` position.

  The image tokens come from `batch["features"]` (a `FeatureLlavaLM`) or
  from `batch["images"]` through the CLIP tower (a `LlavaLM`).
  """
  if "features" in batch:
    vision = model.image_embeddings(batch["features"])
  else:
    images = pixels(batch["images"], model.cfg.vision.image_size)
    vision = model.image_embeddings(images)
  embed = model.lm.embed
  inputs = make_pruned_inputs(
    embed(batch["prefix"]),
    embed(batch["suffix"]),
    batch["suffix_lens"],
    vision,
  )
  out = pruned_forward(model.lm, inputs, schedule, impl=impl)
  return jnp.take_along_axis(out.logits, inputs.query_index[..., None], axis=1)[
    :, 0
  ]


def make_loss(schedule: VisionSchedule, *, impl: str) -> Callable:
  """`loss_fn(model, batch, rng)` of `jaxexit.train`: CE on the answer."""

  def loss_fn(model, batch, rng):
    del rng
    logits = answer_logits(model, batch, schedule, impl=impl)
    loss = optax.softmax_cross_entropy_with_integer_labels(
      logits, batch["answer"]
    ).mean()
    acc = jnp.mean(jnp.argmax(logits, -1) == batch["answer"])
    return loss, {"accuracy": acc}

  return loss_fn


def optimizer(cfg: Config) -> optax.GradientTransformation:
  return train_lib.build_optimizer(
    train_lib.OptimConfig(
      learning_rate=cfg.learning_rate,
      weight_decay=0.01,
      schedule="warmup_cosine",
      warmup_steps=max(cfg.warmup_steps, 1),
      total_steps=cfg.steps,
      grad_clip=1.0,
    )
  )


def init_model(cfg: Config) -> LlavaLM | FeatureLlavaLM:
  """The shared initialisation (same seed for every method)."""
  cls = LlavaLM if cfg.vision == "clip" else FeatureLlavaLM
  return cls(cfg.model, rngs=nnx.Rngs(cfg.seed))


def train_method(
  cfg: Config,
  model: LlavaLM,
  schedule: VisionSchedule,
  train_set: Batch,
  workdir: pathlib.Path,
  *,
  impl: str,
  progress: bool | None,
  mesh=None,
) -> tuple[LlavaLM, dict]:
  """Trains `model` with `schedule` active; resumes from `workdir`.

  `mesh` (None: one device) is `jaxexit.train.train`'s.

  Returns:
    (trained model, last logged metrics).
  """
  num = len(train_set["answer"])

  def batch_fn(step: int) -> Batch:
    idx = shuffled_batch_indices(step, num, cfg.batch_size, cfg.seed)
    return take(train_set, idx)

  return train_lib.train(
    model,
    optimizer(cfg),
    make_loss(schedule, impl=impl),
    batch_fn,
    num_steps=cfg.steps,
    workdir=workdir,
    seed=cfg.seed,
    checkpoint_every=max(cfg.steps // 4, 1),
    max_to_keep=1,
    log_every=max(cfg.steps // 20, 1),
    progress=progress,
    mesh=mesh,
  )


def timing_fns(
  cfg: Config,
  model: LlavaLM,
  schedule: VisionSchedule,
  batch: Batch,
  *,
  impl: str,
) -> dict[str, tuple]:
  """{"train_step": (fn, args), "prefill": (fn, args)} for the timer.

  The train step is the real one (forward, backward, AdamW update) without
  buffer donation, so it can be called repeatedly on the same state; the
  prefill is the image tower and the pruned forward up to the answer
  logits.
  """
  graphdef, state = train_lib.split_train_state(model, optimizer(cfg))
  step = train_lib.make_train_step(make_loss(schedule, impl=impl), donate=False)
  batch = jax.tree.map(jnp.asarray, batch)
  rng = jax.random.key(cfg.seed)
  fn, params = make_prefill(model, schedule, impl=impl)
  return {
    "train_step": (step, (graphdef, state, batch, rng)),
    "prefill": (fn, (params, batch)),
  }


def make_prefill(
  model: LlavaLM, schedule: VisionSchedule, *, impl: str
) -> tuple[Callable, nnx.State]:
  """(`prefill(params, batch) -> [B, V]` answer logits, params).

  The jitted program is cached per (schedule, impl), so evaluation and
  timing share one compiled program per batch shape.
  """
  graphdef, params = nnx.split(model)
  prefill = functools.partial(_prefill(schedule, impl), graphdef=graphdef)
  return prefill, params


@functools.cache
def _prefill(schedule: VisionSchedule, impl: str) -> Callable:
  @functools.partial(jax.jit, static_argnames="graphdef")
  def prefill(params, batch, *, graphdef):
    return answer_logits(
      nnx.merge(graphdef, params), batch, schedule, impl=impl
    )

  return prefill
