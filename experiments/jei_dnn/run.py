"""Training of `python -m experiments.jei_dnn`, one seed at a time.

The backbone is the frozen ImageNet EfficientNet-Lite; its features are
cached once (`experiments.vision_common.features`) and every seed trains
only JEI-DNN's heads on them (`backbone.jei_inputs`):

1. IM warm-up with per-IM early stopping on the validation split (§8.4.1);
2. the alternating GATE/CLASSIFIER phase, once per γ (§8.4.2).

Each result is an orbax checkpoint under `<out>/heads/seed<s>/...`, so a
rerun resumes at the first missing one.
"""

import dataclasses
import pathlib

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxexit import train as train_lib
from jaxexit.methods import jei_dnn, jei_dnn_train


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


def subset(data: jei_dnn.CachedFeatures, limit: int | None):
  """The first `limit` examples (the training split is already shuffled)."""
  return jei_dnn.CachedFeatures(*(np.asarray(x[:limit]) for x in data))


def new_heads(width: int, num_classes: int, num_gates: int, seed: int):
  return jei_dnn.JeiHeads(width, num_classes, num_gates, rngs=nnx.Rngs(seed))


def train_seed(
  cfg,
  seed: int,
  feats: dict[str, jei_dnn.CachedFeatures],
  costs: np.ndarray,
  workdir: pathlib.Path,
  progress: bool | None,
):
  """(warmed-up heads, {weight counts: {γ: JEI-DNN heads}}) of one seed.

  The seed sets the heads' initialisation and the batch order; every
  `cfg.weight_counts` entry starts from the same warmed-up IMs.
  """
  train = subset(feats["train"], cfg.max_jei_train)
  num_gates, width = train.features.shape[1:]
  template = new_heads(width, train.final_logits.shape[-1], num_gates, seed)
  jei_cfg = dataclasses.replace(cfg.jei, seed=seed)
  warm = _restore_or_run(
    workdir / "warmup",
    template,
    lambda: jei_dnn_train.warm_up(
      template, train, jei_cfg, val=feats["val"], progress=progress
    ),
  )
  trained = {}
  for counts in cfg.weight_counts:
    counts_cfg = dataclasses.replace(jei_cfg, pos_weight_counts=counts)
    trained[counts] = {
      gamma: _restore_or_run(
        workdir / counts / f"gamma_{gamma:g}",
        template,
        lambda g=gamma, c=counts_cfg: jei_dnn_train.train_gated(
          warm,
          train,
          feats["val"],
          jnp.asarray(costs, jnp.float32),
          g,
          c,
          progress=progress,
        ),
      )
      for gamma in cfg.gammas
    }
  return warm, trained
