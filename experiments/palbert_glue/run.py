"""Train one exit method on one GLUE task with one seed, then evaluate it.

`train_method` fine-tunes the encoder and the method's heads jointly (the
paper's protocol) with the shared resumable loop, on batches bucketed by
length. `per_layer_outputs` runs every exit once over a split (`simulate`),
and `sweep` scores each point of the method's exit sweep from those outputs
with the vectorised twin of its rule (tested equal to the incremental rule).
"""

import copy
import dataclasses
import functools
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.cli import shard_rows, to_host
from jaxexit import execution, exits, glue_metrics, train
from jaxexit.data.batching import (
  LengthBucketedBatches,
  length_bucketed_eval_batches,
)
from jaxexit.models.exit_classifier import ExitClassifier


@dataclasses.dataclass(frozen=True)
class Split:
  """A tokenised GLUE split: arrays [N, T] and labels [N]."""

  input_ids: np.ndarray
  token_type_ids: np.ndarray
  attention_mask: np.ndarray
  labels: np.ndarray

  def __len__(self):
    return len(self.labels)

  @property
  def lengths(self) -> np.ndarray:
    """[N] true lengths (tokens)."""
    return self.attention_mask.sum(axis=1)

  def take(self, idx, width: int | None = None) -> dict:
    """A numpy batch of rows `idx`, cut to `width` tokens if given."""
    cut = slice(None) if width is None else slice(0, width)
    return {
      "input_ids": self.input_ids[idx, cut],
      "token_type_ids": self.token_type_ids[idx, cut],
      "attention_mask": self.attention_mask[idx, cut],
      "labels": self.labels[idx],
    }

  def subset(self, idx) -> "Split":
    return Split(
      self.input_ids[idx],
      self.token_type_ids[idx],
      self.attention_mask[idx],
      self.labels[idx],
    )


def _carry(model, batch: dict) -> dict:
  """The model's initial carry for a numpy batch."""
  return model.embed(
    jnp.asarray(batch["input_ids"]),
    jnp.asarray(batch["token_type_ids"]),
    jnp.asarray(batch["attention_mask"]),
  )


@functools.cache
def _loss_fn(method, stage):
  """The method's loss in `stage`; one function object per (method, stage)
  so the jitted train step is traced once for every seed."""
  heads_only = method.trainable(stage) is not None

  def loss_fn(model, batch, rng):
    stack, params = model.exit_stack(dropout_key=rng)
    if heads_only:
      # The frozen encoder needs no backward pass (DeeBERT's stage 2).
      params["layers"] = jax.lax.stop_gradient(params["layers"])
      params["heads"]["pooler"] = jax.lax.stop_gradient(
        params["heads"]["pooler"]
      )
    carry = model.embed(
      batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]
    )
    res = execution.simulate(stack, exits.never(), params, carry)
    loss, metrics = method.loss(
      res.per_layer, batch["labels"], batch["step"][0], stage
    )
    return loss, dict(metrics)

  return loss_fn


def _batch_fn(data: Split, batches: LengthBucketedBatches):
  def batch_fn(step):
    idx, width = batches.batch(step)
    batch = data.take(idx, width)
    # [B], like every leaf of a batch, so a mesh can split it on B.
    batch["step"] = np.full(len(idx), step, np.int32)
    return batch

  return batch_fn


@functools.cache
def _optimizer(cfg, method, stage):
  """The optax transformation; one object per (cfg, method, stage), so the
  train state's graphdef, and with it the jitted step, is shared by seeds."""
  base = train.OptimConfig(
    name="adamw" if cfg.weight_decay else "adam",
    learning_rate=cfg.learning_rate,
    weight_decay=cfg.weight_decay,
  )
  groups = [
    train.ParamGroup(
      name="halting",
      predicate=train.path_contains("halting"),
      config=dataclasses.replace(base, learning_rate=cfg.halting_learning_rate),
    ),
    train.ParamGroup(
      name="heads",
      predicate=lambda path: path.startswith("heads/"),
      config=dataclasses.replace(base, learning_rate=cfg.heads_learning_rate),
    ),
  ]
  tx = train.build_optimizer(base, groups)
  only = method.trainable(stage)
  return tx if only is None else train.train_only(tx, only)


def num_steps(cfg, num_examples: int) -> int:
  """Updates per training stage: `epochs` passes over the examples."""
  return max(1, math.ceil(cfg.epochs * num_examples / cfg.batch_size))


def fingerprint(cfg, heads_cfg, method, data: Split, task: str) -> dict:
  """What determines a training run (stored with every checkpoint)."""
  return {
    "config": {
      k: v
      for k, v in dataclasses.asdict(cfg).items()
      if not k.startswith("timing")
      and k
      not in (
        "seeds",
        "batch1_examples",
        "tolerance",
        "heldout_examples",
        "max_eval_examples",
        "eval_batch_size",
      )
    },
    "heads": dataclasses.asdict(heads_cfg),
    "method": method.name,
    "task": task,
    "train_examples": len(data),
    "train_data": train.fingerprint_array(data.input_ids),
    "train_labels": train.fingerprint_array(data.labels),
  }


def train_method(
  encoder,
  heads_cfg,
  method,
  data: Split,
  cfg,
  seed: int,
  workdir: pathlib.Path,
  progress: bool | None,
  *,
  fingerprint: dict | None = None,
  force_resume: bool = False,
  mesh=None,
):
  """Trains `method`'s heads and the encoder on `data`; resumable.

  A rerun in the same `workdir` resumes (or reuses a finished run) only if
  `fingerprint` matches the stored one, unless `force_resume`. `mesh`
  (None: one device) is `jaxexit.train.train`'s.

  Returns:
    `(model, metrics)`: the trained `ExitClassifier` and the last logged
    training metrics of the last stage.
  """
  model = ExitClassifier(copy.deepcopy(encoder), heads_cfg, rngs=nnx.Rngs(seed))
  metrics = {}
  for stage in range(method.stages):
    widths = cfg.train_bucket_widths
    batches = LengthBucketedBatches(
      np.minimum(data.lengths, widths[-1]),
      cfg.batch_size,
      seed + stage,
      widths=widths,
    )
    model, metrics = train.train(
      model,
      _optimizer(cfg, method, stage),
      _loss_fn(method, stage),
      _batch_fn(data, batches),
      num_steps=num_steps(cfg, len(data)),
      workdir=workdir / f"stage{stage}",
      seed=seed + stage,
      checkpoint_every=cfg.checkpoint_every,
      max_to_keep=1,
      log_every=10,
      progress=progress,
      fingerprint=fingerprint,
      force_resume=force_resume,
      mesh=mesh,
    )
  return model, metrics


@functools.partial(jax.jit, static_argnums=0)
def _simulate(graphdef, state, input_ids, token_type_ids, attention_mask):
  """Every exit's outputs for one batch. Keyed on the (hashable) graphdef,
  so every seed and split of a method shares the compiled programs."""
  model = nnx.merge(graphdef, state)
  stack, params = model.exit_stack()
  carry = model.embed(input_ids, token_type_ids, attention_mask)
  return execution.simulate(stack, exits.never(), params, carry).per_layer


def per_layer_outputs(model, data: Split, cfg, mesh=None):
  """One `simulate` pass over `data`: per-layer outputs, leaves [N, L, ...].

  Batches are grouped by length (one compiled shape per bucket width),
  their rows split over `mesh` (None: one device); outputs come back in
  the order of `data`.
  """
  graphdef, state = nnx.split(model)
  order, chunks = [], []
  for batch, width in length_bucketed_eval_batches(
    data.lengths, cfg.eval_batch_size, widths=cfg.bucket_widths
  ):
    b = shard_rows(data.take(batch.indices, width), mesh)
    per_layer = _simulate(
      graphdef, state, b["input_ids"], b["token_type_ids"], b["attention_mask"]
    )
    keep = batch.num_valid
    order.append(batch.indices[:keep])
    chunks.append(jax.tree.map(lambda x: x[:keep], to_host(per_layer)))
  merged = jax.tree.map(lambda *xs: np.concatenate(xs), *chunks)
  inverse = np.argsort(np.concatenate(order))
  return jax.tree.map(lambda x: jnp.asarray(x[inverse]), merged)


def predict(method, per_layer, param, key):
  """`(preds [N], correct-ready logits, exit_layer [N])` at one sweep point."""
  exit_layer = np.asarray(method.exit_layer(per_layer, param, key))
  logits = np.take_along_axis(
    np.asarray(per_layer.logits), exit_layer[:, None, None], axis=1
  )[:, 0]
  preds = logits[:, 0] if logits.shape[-1] == 1 else logits.argmax(-1)
  return preds, exit_layer


def sweep(method, per_layer, labels, task: str, key) -> list[dict]:
  """Every sweep point's score and depth statistics on one split."""
  num_layers = per_layer.logits.shape[1]
  points = []
  for param in method.sweep(num_layers):
    preds, exit_layer = predict(method, per_layer, param, key)
    score = glue_metrics.glue_score(task, preds, labels)["selection"]
    depth = exit_layer + 1
    points.append(
      {
        "param": param,
        "score": float(score),
        "avg_layers": float(np.mean(depth)),
        "avg_layers_std_over_examples": float(np.std(depth)),
        "exit_histogram": np.bincount(
          exit_layer, minlength=num_layers
        ).tolist(),
        "correct": (preds == labels).astype(np.int8),
      }
    )
  return points


def per_layer_scores(per_layer, labels, task: str) -> list[float]:
  """The task score of each exit alone (every example leaves at layer n)."""
  logits = np.asarray(per_layer.logits)
  scores = []
  for n in range(logits.shape[1]):
    preds = (
      logits[:, n, 0] if logits.shape[-1] == 1 else logits[:, n].argmax(-1)
    )
    scores.append(
      float(glue_metrics.glue_score(task, preds, labels)["selection"])
    )
  return scores


def halting_spread(per_layer) -> float | None:
  """Std over examples of the expected halting depth Σ n·p_n / Σ p_n."""
  if per_layer.halt is None:
    return None
  p = np.asarray(exits.halting_distribution(per_layer.halt))
  depth = np.arange(1, p.shape[-1] + 1)
  expected = (p * depth).sum(-1) / np.maximum(p.sum(-1), 1e-9)
  return float(np.std(expected))


def speed(model, method, param, data: Split, cfg, key):
  """Realised speed-ups at batch `cfg.batch_size` (compacted) and 1.

  Timed at the full `max_len` width (the inputs of a deployed model are
  padded to one length), against the full model in the same run.
  """
  stack, params = model.exit_stack()
  rule = method.rule(param, model.heads.cfg.num_classes)

  def carries(size, limit):
    n = min(limit * size, (len(data) // size) * size)
    return [
      _carry(model, data.take(slice(i, i + size))) for i in range(0, n, size)
    ]

  def keys(n):
    return (
      [jax.random.fold_in(key, i) for i in range(n)]
      if method.rule_needs_key
      else None
    )

  big = carries(cfg.batch_size, cfg.timing_batches)
  one = carries(1, cfg.batch1_examples)
  fast = execution.measure_speedup(
    stack,
    rule,
    params,
    big,
    mode="compacted",
    rule_inputs=keys(len(big)),
    repeats=cfg.timing_repeats,
  )
  single = execution.measure_speedup(
    stack,
    rule,
    params,
    one,
    mode="early_stop",
    rule_inputs=keys(len(one)),
    repeats=cfg.timing_repeats,
  )
  return fast, single
