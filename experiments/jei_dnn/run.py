"""The three training stages of `python -m experiments.jei_dnn`.

1. `train_backbone`: a ViT on CIFAR-10 train minus the validation split,
   random crop + flip, AdamW with warm-up cosine; orbax checkpoints under
   `<out>/backbone`, so a rerun resumes where it stopped.
2. `cache_features`: the frozen backbone's final-norm CLS token after
   every block and its logits, once per split (`<out>/features/*.npz`).
3. `train_heads`: JEI-DNN's IM warm-up once, then the alternating
   GATE/CLASSIFIER phase per γ, on the cached features; each result is
   checkpointed (`<out>/jei/...`) and a rerun skips it.
"""

import dataclasses
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxexit import train as train_lib
from jaxexit.data.augment import normalize, random_crop_flip, resize
from jaxexit.data.batching import eval_batches, shuffled_batch_indices
from jaxexit.data.cifar import ImageSplit
from jaxexit.methods import jei_dnn, jei_dnn_train
from jaxexit.models.vit import VIT_CONFIGS, ViT

CIFAR_SIZE = 32


def model_inputs(images: jax.Array, size: int) -> jax.Array:
  """uint8 [B, 32, 32, 3] → normalised float [B, size, size, 3]."""
  if size != CIFAR_SIZE:
    images = resize(images, size)
  return normalize(images)


def vit_config(cfg):
  return dataclasses.replace(VIT_CONFIGS[cfg.vit], dropout=cfg.dropout)


def _backbone_loss(cfg, size: int):
  def loss_fn(model, batch, rng):
    aug_key, drop_key = jax.random.split(rng)
    images = batch["images"]
    if size != CIFAR_SIZE:
      images = resize(images, size)
    images = random_crop_flip(aug_key, images, padding=cfg.crop_padding)
    logits = model(
      normalize(images), dropout_key=drop_key if cfg.dropout else None
    )
    labels = batch["labels"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return jnp.mean(loss), {"accuracy": accuracy}

  return loss_fn


def train_backbone(
  cfg, data: ImageSplit, workdir: pathlib.Path, progress: bool | None
) -> ViT:
  """Stage 1: trains (or resumes) the ViT backbone."""
  vit_cfg = vit_config(cfg)
  model = ViT(vit_cfg, rngs=nnx.Rngs(cfg.seed))
  tx = train_lib.build_optimizer(
    train_lib.OptimConfig(
      name="adamw",
      learning_rate=cfg.learning_rate,
      weight_decay=cfg.weight_decay,
      schedule="warmup_cosine",
      warmup_steps=cfg.warmup_steps,
      total_steps=cfg.steps,
      grad_clip=1.0,
    )
  )

  def batch_fn(step):
    idx = shuffled_batch_indices(step, len(data), cfg.batch_size, cfg.seed)
    return {"images": data.images[idx], "labels": data.labels[idx]}

  model, metrics = train_lib.train(
    model,
    tx,
    _backbone_loss(cfg, vit_cfg.image_size),
    batch_fn,
    num_steps=cfg.steps,
    workdir=workdir,
    seed=cfg.seed,
    checkpoint_every=cfg.checkpoint_every,
    log_every=20,
    progress=progress,
  )
  if metrics:
    print(
      f"backbone: step {cfg.steps}, train loss {metrics['loss']:.3f}, "
      f"train accuracy {metrics['accuracy']:.3f}",
      flush=True,
    )
  return model


@jax.jit
def _block_outputs(model: ViT, images: jax.Array):
  feats = model.cls_per_block(model_inputs(images, model.cfg.image_size))
  return feats[:, :-1], model.head(feats[:, -1]).astype(jnp.float32)


def cache_features(
  model: ViT, split: ImageSplit, batch_size: int, path: pathlib.Path
) -> jei_dnn.CachedFeatures:
  """Stage 2: the frozen backbone's IM inputs and logits (cached on disk)."""
  if path.is_file():
    with np.load(path) as f:
      return jei_dnn.CachedFeatures(
        f["features"], f["final_logits"], f["labels"]
      )
  feats, logits = [], []
  for idx, num_valid in eval_batches(len(split), batch_size):
    f, z = jax.device_get(_block_outputs(model, jnp.asarray(split.images[idx])))
    feats.append(f[:num_valid])
    logits.append(z[:num_valid])
  out = jei_dnn.CachedFeatures(
    np.concatenate(feats), np.concatenate(logits), split.labels.astype(np.int32)
  )
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp.npz")
  np.savez(tmp, **out._asdict())
  os.replace(tmp, path)
  return out


def _restore_or_run(path: pathlib.Path, template: nnx.Module, fn):
  """The heads saved at `path`, else `fn()` saved there (orbax)."""
  graphdef, state = nnx.split(template)
  with train_lib.Checkpointer(path, max_to_keep=1) as ckpt:
    restored = ckpt.restore_latest(train_lib.abstract_like(state))
    if restored is not None:
      return nnx.merge(graphdef, restored.state)
    heads = fn()
    ckpt.save(0, nnx.state(heads), force=True)
  return heads


def subset_features(data: jei_dnn.CachedFeatures, limit: int | None):
  """The first `limit` examples (the training split is already shuffled)."""
  return jei_dnn.CachedFeatures(*(x[:limit] for x in data))


def new_heads(cfg) -> jei_dnn.JeiHeads:
  vit_cfg = vit_config(cfg)
  return jei_dnn.JeiHeads(
    vit_cfg.width,
    vit_cfg.num_classes,
    vit_cfg.depth - 1,
    rngs=nnx.Rngs(cfg.jei.seed),
  )


def train_heads(
  cfg,
  feats: dict[str, jei_dnn.CachedFeatures],
  costs: np.ndarray,
  workdir: pathlib.Path,
  progress: bool | None,
):
  """Stage 3: (warmed-up heads, {γ: JEI-DNN heads})."""
  train = subset_features(feats["train"], cfg.max_jei_train)
  template = new_heads(cfg)
  warm = _restore_or_run(
    workdir / "warmup",
    template,
    lambda: jei_dnn_train.warm_up(template, train, cfg.jei, progress=progress),
  )
  trained = {}
  for gamma in cfg.gammas:
    trained[gamma] = _restore_or_run(
      workdir / f"gamma_{gamma:g}",
      template,
      lambda g=gamma: jei_dnn_train.train_gated(
        warm,
        train,
        feats["val"],
        jnp.asarray(costs, jnp.float32),
        g,
        cfg.jei,
        progress=progress,
      ),
    )
  return warm, trained
