"""Train one exit method on one GLUE task, then evaluate its exit sweep."""

import copy
import dataclasses
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxexit import execution, exits, glue_metrics, train
from jaxexit.data import glue_task
from jaxexit.data.batching import shuffled_batch_indices
from jaxexit.methods import encoder_exits
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

  def take(self, idx) -> dict:
    return {"input_ids": self.input_ids[idx],
            "token_type_ids": self.token_type_ids[idx],
            "attention_mask": self.attention_mask[idx],
            "labels": self.labels[idx]}


def _carry(model, batch: dict) -> dict:
  """The model's initial carry for a numpy batch."""
  return model.embed(jnp.asarray(batch["input_ids"]),
                     jnp.asarray(batch["token_type_ids"]),
                     jnp.asarray(batch["attention_mask"]))


def _loss_fn(method, stage):
  loss_of = encoder_exits.method_loss(method, stage)

  def loss_fn(model, batch, rng):
    stack, params = model.exit_stack(dropout_key=rng)
    carry = model.embed(batch["input_ids"], batch["token_type_ids"],
                        batch["attention_mask"])
    res = execution.simulate(stack, exits.never(), params, carry)
    loss, metrics = loss_of(res.per_layer, batch["labels"], batch["step"])
    return loss, dict(metrics)

  return loss_fn


def _batch_fn(data: Split, batch_size: int, seed: int):
  def batch_fn(step):
    batch = data.take(shuffled_batch_indices(step, len(data), batch_size, seed))
    batch["step"] = np.int32(step)
    return batch

  return batch_fn


def _optimizer(cfg, method, stage):
  base = train.OptimConfig(name="adamw" if cfg.weight_decay else "adam",
                           learning_rate=cfg.learning_rate,
                           weight_decay=cfg.weight_decay)
  groups = [
      train.ParamGroup(
          name="halting", predicate=train.path_contains("halting"),
          config=dataclasses.replace(
              base, learning_rate=cfg.halting_learning_rate)),
      train.ParamGroup(
          name="heads", predicate=lambda path: path.startswith("heads/"),
          config=dataclasses.replace(
              base, learning_rate=cfg.heads_learning_rate)),
  ]
  tx = train.build_optimizer(base, groups)
  only = method.trainable(stage)
  return tx if only is None else train.train_only(tx, only)


def train_method(encoder, method, data: Split, num_classes: int, cfg,
                 workdir: pathlib.Path, progress: bool | None):
  """Trains `method`'s heads (and the encoder) on `data`; resumable."""
  model = ExitClassifier(copy.deepcopy(encoder), method.heads(num_classes),
                         rngs=nnx.Rngs(cfg.seed))
  steps = max(1, math.ceil(cfg.epochs * len(data) / cfg.batch_size))
  metrics = {}
  for stage in range(method.stages):
    model, metrics = train.train(
        model, _optimizer(cfg, method, stage), _loss_fn(method, stage),
        _batch_fn(data, cfg.batch_size, cfg.seed + stage), num_steps=steps,
        workdir=workdir / f"stage{stage}", seed=cfg.seed + stage,
        checkpoint_every=cfg.checkpoint_every, log_every=10,
        progress=progress)
  return model, metrics


def _batches(data: Split, size: int, limit: int | None):
  n = (len(data) // size) * size
  return [data.take(slice(i, i + size)) for i in range(0, n, size)][:limit]


def _per_layer_outputs(model, data: Split, batch_size: int):
  """One `simulate` pass over `data`: per-layer outputs, leaves [N, L, ...]."""
  stack, params = model.exit_stack()
  runner = execution.make_runner("simulate", stack, exits.never())
  chunks = []
  for i in range(0, len(data), batch_size):
    idx = np.arange(i, i + batch_size) % len(data)  # pad the last batch
    b = data.take(idx)
    carry = _carry(model, b)
    keep = min(batch_size, len(data) - i)
    per_layer = runner(params, carry).per_layer
    chunks.append(jax.tree.map(lambda x: np.asarray(x)[:keep], per_layer))
  return jax.tree.map(lambda *xs: jnp.asarray(np.concatenate(xs)), *chunks)


def _predict(method, per_layer, param, key):
  """(preds [N], exit_layer [N]) from the vectorised twin of the rule."""
  exit_layer = np.asarray(method.exit_layer(per_layer, param, key))
  logits = np.take_along_axis(
      np.asarray(per_layer.logits), exit_layer[:, None, None], axis=1)[:, 0]
  preds = logits[:, 0] if logits.shape[-1] == 1 else logits.argmax(-1)
  return preds, exit_layer


def _speed(model, method, param, data, cfg, key):
  """Realised speed-ups at batch `cfg.batch_size` (compacted) and 1."""
  stack, params = model.exit_stack()
  rule = method.rule(param, model.heads.cfg.num_classes == 1)

  def carries(batches):
    return [_carry(model, b) for b in batches]

  def keys(n):
    return ([jax.random.fold_in(key, i) for i in range(n)]
            if method.rule_needs_key else None)

  big = carries(_batches(data, cfg.batch_size, cfg.timing_batches))
  one = carries(_batches(data, 1, cfg.batch1_examples))
  fast = execution.measure_speedup(stack, rule, params, big, mode="compacted",
                                   rule_inputs=keys(len(big)),
                                   repeats=cfg.timing_repeats)
  single = execution.measure_speedup(stack, rule, params, one,
                                     mode="early_stop",
                                     rule_inputs=keys(len(one)),
                                     repeats=cfg.timing_repeats)
  return fast, single


def evaluate_method(model, method, task: str, data: Split, cfg) -> tuple:
  """(record at the default operating point, sweep records)."""
  key = jax.random.key(cfg.seed)
  num_layers = model.num_layers
  metric = "+".join(glue_task(task).selection)
  per_layer = _per_layer_outputs(model, data, cfg.batch_size)
  sweep = []
  for param in method.sweep(num_layers):
    preds, exit_layer = _predict(method, per_layer, param, key)
    score = glue_metrics.glue_score(task, preds, data.labels)
    avg = float(np.mean(exit_layer + 1))
    sweep.append({"task": task, "method": method.name, "param": param,
                  "metric": metric, "score": round(score["selection"], 4),
                  "metrics": {k: round(v, 4) for k, v in score.items()},
                  "avg_layers": round(avg, 3),
                  "theoretical_speedup": round(num_layers / avg, 3)})
  default = method.default(num_layers)
  record = dict(next(r for r in sweep if r["param"] == default))
  fast, single = _speed(model, method, default, data, cfg, key)
  record.update(realised_speedup=round(fast.realised_speedup, 3),
                realised_speedup_batch1=round(single.realised_speedup, 3),
                timing_theoretical_speedup=round(fast.theoretical_speedup, 3))
  return record, sweep
