"""Training DYNAMAX exit classifiers on a frozen backbone (spec §3.2).

The backbone runs once over the training sequences (`exit_features`) and its
hidden states at every exit plus the last block's output are kept; the
classifiers then train on those features. Per exit e the loss is

  ce_weight · CE(p_e, next token) + kl_weight · KL(p_L ‖ p_e)
    + score_weight · BCE_balanced(score_e, 1[argmax p_e = argmax p_L])

averaged over exits and valid positions, where p_L is the frozen final
layer's distribution (CALM's class-balanced meta-classifier loss for the
consistency score). Only the classifiers are trained: they alone are the
model of `jaxexit.train.train`, so the optimizer and the checkpoints hold
the classifiers and their moments and nothing of the backbone (a 7B
backbone would add ~29 GB per checkpoint). The frozen backbone's arrays
reach the jitted step as part of each batch (`batch["backbone"]`): an
argument, neither differentiated, donated nor saved, and not a constant
baked into the program. Checkpoints resume exactly.

Axes: n sequences, B batch, T tokens, E exits, D width, V vocabulary.
"""

import dataclasses
import functools
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxexit import checks
from jaxexit import train as train_lib
from jaxexit.data.batching import shuffled_batch_indices
from jaxexit.methods.dynamax import ExitClassifiers
from jaxexit.train.progress import ProgressBar
from jaxtyping import ArrayLike

from jaxexit.typing import Array, Bool, Float, Int


@dataclasses.dataclass(frozen=True)
class ExitFeatures:
  """Frozen-backbone features of n training sequences (host numpy arrays).

  Attributes:
    hidden: [n, T, E, D] hidden state after each exit layer.
    final: [n, T, D] output of the last block (before the final norm).
    targets: [n, T] next-token ids (position t predicts token t+1).
    mask: [n, T] bool, position t has a valid next token.
  """

  hidden: np.ndarray
  final: np.ndarray
  targets: np.ndarray
  mask: np.ndarray

  def batch(self, index: np.ndarray) -> dict[str, np.ndarray]:
    """Rows `index` as a training batch."""
    return {
      f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)
    }


@functools.partial(jax.jit, static_argnames=("graphdef", "exit_layers"))
def _features(graphdef, params, tokens, valid, *, exit_layers):
  backbone = nnx.merge(graphdef, params)
  batch, length = tokens.shape
  positions = jnp.broadcast_to(jnp.arange(length), tokens.shape)
  caches = backbone.init_cache(batch, length)
  h = backbone.embed(tokens)
  kept = []
  for i in range(backbone.num_layers):
    h, _ = backbone.layer(i, h, caches[i], positions, valid)
    if i + 1 in exit_layers:
      kept.append(h)
  return jnp.stack(kept, axis=2), h  # [B, T, E, D], [B, T, D]


def exit_features(
  backbone,
  tokens: Int[ArrayLike, "n T"],
  lengths: Int[ArrayLike, "n"],
  exit_layers: tuple[int, ...],
  *,
  batch_size: int = 8,
  progress: bool | None = None,
) -> ExitFeatures:
  """Runs the frozen backbone over right-padded sequences once."""
  tokens = np.asarray(tokens, np.int32)
  lengths = np.asarray(lengths, np.int32)
  if tokens.ndim != 2 or lengths.shape != tokens.shape[:1]:
    raise ValueError(
      f"tokens must be [n, T] and lengths [n]; got "
      f"{tokens.shape} and {lengths.shape}"
    )
  if exit_layers[-1] >= backbone.num_layers:
    raise ValueError(
      f"exit_layers={exit_layers} must be < num_layers={backbone.num_layers}"
    )
  graphdef, params = nnx.split(backbone)
  positions = np.arange(tokens.shape[1])
  valid = positions[None] < lengths[:, None]
  hidden, final = [], []
  with ProgressBar(len(tokens), enabled=progress) as bar:
    for start in range(0, len(tokens), batch_size):
      rows = slice(start, start + batch_size)
      h, f = _features(
        graphdef,
        params,
        tokens[rows],
        valid[rows],
        exit_layers=tuple(exit_layers),
      )
      hidden.append(np.asarray(h))
      final.append(np.asarray(f))
      bar.update(len(tokens[rows]))
  targets = np.concatenate([tokens[:, 1:], np.zeros_like(tokens[:, :1])], 1)
  mask = positions[None] < (lengths[:, None] - 1)
  return ExitFeatures(
    np.concatenate(hidden), np.concatenate(final), targets, mask
  )


class DynamaxTrainer(nnx.Module):
  """The frozen backbone and the classifiers being trained."""

  def __init__(self, backbone, classifiers: ExitClassifiers):
    self.backbone = backbone
    self.classifiers = classifiers


@dataclasses.dataclass(frozen=True, kw_only=True)
class DynamaxLossConfig:
  """Weights of the three terms (each ≥ 0, not all 0)."""

  ce_weight: float = 1.0
  kl_weight: float = 1.0
  score_weight: float = 1.0

  def __post_init__(self):
    for f in dataclasses.fields(self):
      checks.in_range(
        f.name, getattr(self, f.name), 0.0, float("inf"), high_open=True
      )
    if self.ce_weight + self.kl_weight + self.score_weight == 0:
      raise ValueError("DynamaxLossConfig weights are all 0")


def _masked_mean(x: Float[Array, "B T"], mask: Bool[Array, "B T"]) -> Array:
  return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def _balanced_bce(
  z: Float[Array, "B T"], label: Bool[Array, "B T"], mask: Bool[Array, "B T"]
) -> Array:
  """CALM's meta loss: positives weighted by 1 − their share, negatives by
  it."""
  pos = _masked_mean(label.astype(jnp.float32), mask)
  pos = jax.lax.stop_gradient(pos)
  w = jnp.where(label, 1.0 - pos, pos)
  bce = jnp.where(label, -jax.nn.log_sigmoid(z), -jax.nn.log_sigmoid(-z))
  return _masked_mean(2.0 * w * bce, mask)


def dynamax_loss(
  model: DynamaxTrainer,
  batch,
  rng,
  weights: DynamaxLossConfig = DynamaxLossConfig(),
):
  """Loss of all exits on a feature batch; `(loss, metrics)`."""
  del rng
  return _exit_loss(model.backbone, model.classifiers, batch, weights)


def _classifier_loss(classifiers, batch, rng, *, backbone_def, weights):
  """The training loss: the model is the classifiers alone, and the frozen
  backbone's state comes in `batch["backbone"]` (see the module doc)."""
  del rng
  backbone = nnx.merge(backbone_def, batch["backbone"])
  return _exit_loss(backbone, classifiers, batch["features"], weights)


def _exit_loss(backbone, classifiers: ExitClassifiers, batch, weights):
  """`dynamax_loss` of `classifiers` on a frozen `backbone`."""
  graphdef, state = nnx.split(backbone)
  backbone = nnx.merge(graphdef, jax.lax.stop_gradient(state))
  mask = batch["mask"]
  bsz, length = mask.shape
  positions = jnp.broadcast_to(jnp.arange(length), mask.shape)
  valid = jnp.ones(mask.shape, bool)
  logp_final = jax.nn.log_softmax(
    backbone.lm_head(backbone.final_norm(batch["final"])), axis=-1
  )
  final_top = jnp.argmax(logp_final, axis=-1)
  states = classifiers.init_state(classifiers.config.num_exits, bsz, length)
  metrics, total = {}, 0.0
  for e in range(classifiers.config.num_exits):
    h = batch["hidden"][:, :, e]
    logits, _ = classifiers(backbone, e, h, states[e], positions, valid)
    logp = jax.nn.log_softmax(logits, axis=-1)
    ce = -jnp.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
    kl = jnp.sum(jnp.exp(logp_final) * (logp_final - logp), axis=-1)
    agree = jax.lax.stop_gradient(jnp.argmax(logp, axis=-1) == final_top)
    z = classifiers.score_heads[e](h.astype(jnp.float32))[..., 0]
    terms = {
      "ce": _masked_mean(ce, mask),
      "kl": _masked_mean(kl, mask),
      "score_bce": _balanced_bce(z, agree, mask),
    }
    total += (
      weights.ce_weight * terms["ce"]
      + weights.kl_weight * terms["kl"]
      + weights.score_weight * terms["score_bce"]
    )
    metrics.update({f"{k}_{e}": v for k, v in terms.items()})
    metrics[f"agree_{e}"] = _masked_mean(agree.astype(jnp.float32), mask)
  loss = total / classifiers.config.num_exits
  return loss, {"loss": loss, **metrics}


def train_exit_classifiers(
  backbone,
  classifiers: ExitClassifiers,
  features: ExitFeatures,
  *,
  optim: train_lib.OptimConfig,
  num_steps: int,
  batch_size: int,
  workdir: str | os.PathLike,
  weights: DynamaxLossConfig = DynamaxLossConfig(),
  seed: int = 0,
  checkpoint_every: int = 100,
  progress: bool | None = None,
  fingerprint: Mapping[str, Any] | None = None,
) -> tuple[ExitClassifiers, dict]:
  """Trains `classifiers` on `features` with the backbone frozen.

  Batches are drawn by `jaxexit.data.batching.shuffled_batch_indices`, a
  pure function of (seed, step), so a resumed run sees the same batches.
  `fingerprint` (e.g. a hash of the backbone's weights and of the training
  tokens) is stored with every checkpoint; resuming classifiers trained
  for another backbone or data raises `FingerprintMismatch`, naming the
  field (`jaxexit.train.train`).

  The train state (and so every checkpoint) is the classifiers and their
  optimizer state only; the backbone is read, never written.

  Returns:
    `classifiers` (updated in place) and the last logged metrics.
  """
  n = len(features.targets)
  backbone_def, backbone_state = nnx.split(backbone)
  batch_fn = lambda step: {
    "features": features.batch(
      shuffled_batch_indices(step, n, batch_size, seed)
    ),
    "backbone": backbone_state,
  }
  trained, metrics = train_lib.train(
    classifiers,
    train_lib.build_optimizer(optim),
    functools.partial(
      _classifier_loss, backbone_def=backbone_def, weights=weights
    ),
    batch_fn,
    num_steps=num_steps,
    workdir=workdir,
    seed=seed,
    checkpoint_every=checkpoint_every,
    progress=progress,
    # Checkpoints of the older layout (backbone included) name this field
    # instead of failing to restore.
    fingerprint={**(fingerprint or {}), "trained_state": "classifiers"},
  )
  # The train step donates its state: hand the trained arrays back to the
  # caller's module.
  nnx.update(classifiers, nnx.state(trained))
  return classifiers, metrics


@functools.partial(jax.jit, static_argnames=("graphdefs",))
def _agreement_counts(graphdefs, params, hidden, final, mask):
  backbone, classifiers = (nnx.merge(g, p) for g, p in zip(graphdefs, params))
  top = jnp.argmax(backbone.lm_head(backbone.final_norm(final)), axis=-1)
  batch, length = mask.shape
  positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
  states = classifiers.init_state(hidden.shape[2], batch, length)
  counts = []
  for e in range(hidden.shape[2]):
    logits, _ = classifiers(
      backbone, e, hidden[:, :, e], states[e], positions, mask
    )
    same = jnp.argmax(logits, axis=-1) == top
    counts.append(jnp.sum(same & mask))
  return jnp.stack(counts)


def exit_agreement(
  backbone,
  classifiers: ExitClassifiers,
  features: ExitFeatures,
  *,
  batch_size: int = 8,
) -> np.ndarray:
  """[E] top-1 agreement of each exit with the final layer.

  The fraction of valid positions (`features.mask`) where the classifier's
  argmax at exit e equals the frozen final layer's argmax; fresh
  classifiers of any kind give the shared LM head's agreement.
  """
  graphdefs, params = zip(*(nnx.split(m) for m in (backbone, classifiers)))
  total = np.zeros(features.hidden.shape[2], np.int64)
  for start in range(0, len(features.mask), batch_size):
    rows = slice(start, start + batch_size)
    total += np.asarray(
      _agreement_counts(
        tuple(graphdefs),
        tuple(params),
        features.hidden[rows],
        features.final[rows],
        features.mask[rows],
      )
    )
  return total / max(int(features.mask.sum()), 1)
