"""Next-token loss for any `DecoderBackbone` (training LMs from scratch).

The model runs its prefill path (fresh cache of T positions, every position
valid: packed rows), so the trained weights are exactly the ones decoding
uses. Logits and the cross-entropy are float32.

Axes: B batch, T tokens, V vocabulary.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxexit.data.batching import shuffled_batch_indices
from jaxexit.nn.remat import remat_call
from jaxexit.train import fingerprint as fp_lib
from jaxexit.train.loop import train
from jaxexit.train.metrics import read_metrics
from jaxexit.train.optim import OptimConfig, build_optimizer
from jaxexit.typing import Array, Float, Int


def backbone_logits(model, tokens: Int[Array, "B T"]) -> Float[Array, "B T V"]:
  """Full-depth logits of a `DecoderBackbone` on fully valid rows."""
  batch, length = tokens.shape
  positions = jnp.broadcast_to(jnp.arange(length), tokens.shape)
  valid = jnp.ones(tokens.shape, bool)
  caches = model.init_cache(batch, length)
  h = model.embed(tokens)
  for i in range(model.num_layers):
    layer = functools.partial(model.layer, i)  # rematerialised if asked
    h, _ = remat_call(layer, h, caches[i], positions, valid)
  return model.lm_head(model.final_norm(h))


def causal_lm_loss(model, batch: dict, rng) -> tuple[Array, dict]:
  """Mean next-token cross-entropy of `batch["tokens"]` [B, T].

  A `jaxexit.train.train` loss: `(model, batch, rng) -> (loss, metrics)`.
  """
  del rng
  tokens = batch["tokens"]
  logp = jax.nn.log_softmax(backbone_logits(model, tokens[:, :-1]), axis=-1)
  nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
  loss = jnp.mean(nll)
  accuracy = jnp.mean(jnp.argmax(logp, axis=-1) == tokens[:, 1:])
  return loss, {"loss": loss, "accuracy": accuracy}


def train_causal_lm(
  model,
  rows: np.ndarray,
  *,
  steps: int,
  batch_size: int,
  learning_rate: float,
  workdir: str | os.PathLike,
  seed: int,
  progress: bool | None = None,
  fingerprint: dict | None = None,
) -> tuple[object, float]:
  """Trains a `DecoderBackbone` from scratch on packed rows, resumably.

  AdamW (weight decay 0.01), warmup over the first 5 % of steps then cosine
  decay, gradient clipping at 1; batches are a pure function of (seed,
  step) over `rows`, so a resumed run sees the same data
  (`jaxexit.train.train`, orbax checkpoints in `workdir`).

  Args:
    model: the freshly initialised backbone.
    rows: [n, T] int token rows (`jaxexit.data.text.pack_documents`).
    steps, batch_size, learning_rate: the schedule.
    workdir: checkpoints and `metrics.jsonl`.
    seed: initialisation is the caller's; this seeds data order.
    progress: progress bar (None: only on a terminal).
    fingerprint: what else determines the run (stored, compared on
      resume); a hash of `rows` is always added.

  Returns:
    (trained model, the last logged training loss).
  """
  optim = OptimConfig(
    learning_rate=learning_rate,
    weight_decay=0.01,
    schedule="warmup_cosine",
    warmup_steps=max(steps // 20, 1),
    total_steps=steps,
    grad_clip=1.0,
  )
  rows = np.asarray(rows, np.int32)

  def batch_fn(step):
    idx = shuffled_batch_indices(step, len(rows), batch_size, seed)
    return {"tokens": rows[idx]}

  model, _ = train(
    model,
    build_optimizer(optim),
    causal_lm_loss,
    batch_fn,
    num_steps=steps,
    workdir=workdir,
    seed=seed,
    checkpoint_every=max(steps // 4, 1),
    progress=progress,
    fingerprint={
      **(fingerprint or {}),
      "rows": fp_lib.fingerprint_array(rows),
      "optim": optim,
      "batch_size": batch_size,
    },
  )
  # The log, not the return value: a resumed finished run trains no step.
  loss = read_metrics(os.path.join(workdir, "metrics.jsonl"))[-1]["loss"]
  return model, float(loss)
