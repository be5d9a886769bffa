"""The shared training loop: resumable, deterministic, model-agnostic.

`train` knows nothing about models. The data is `batch_fn(step)`, a pure
function of the step, and the step's randomness is `step_key(base, step)`,
so a run killed at any point and restarted in the same `workdir` continues
from its newest checkpoint and ends with the same parameters, optimizer state
and `metrics.jsonl` as an uninterrupted run.

Step numbering: "step s" is the state after `s` updates. Update `s + 1`
consumes `batch_fn(s)` and `step_key(base, s)`; metrics and checkpoints are
labelled with the number of updates done. The last step is always logged and
checkpointed.
"""

import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxexit import checks
from jaxexit import sharding as sharding_lib
from jaxexit.train import seed as seed_lib
from jaxexit.train.checkpoint import Checkpointer, abstract_like
from jaxexit.train.metrics import MetricsWriter
from jaxexit.train.progress import ProgressBar
from jaxexit.train.step import LossFn, make_train_step, split_train_state
from jaxexit.typing import PyTree

METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"


def _resume(ckpt: Checkpointer, state, base):
  """Returns (start_step, state) from the newest checkpoint, if any."""
  restored = ckpt.restore_latest(abstract_like(state),
                                 abstract_rng=abstract_like(base))
  if restored is None:
    return 0, state
  if not np.array_equal(jax.random.key_data(restored.rng),
                        jax.random.key_data(base)):
    raise ValueError(
        f"checkpoint at step {restored.step} in {ckpt.directory} was made "
        "with a different seed; use a fresh workdir")
  return restored.step, restored.state


def _check_args(num_steps, checkpoint_every, log_every) -> None:
  checks.positive_int("num_steps", num_steps)
  checks.positive_int("checkpoint_every", checkpoint_every)
  checks.positive_int("log_every", log_every)


def train(model: nnx.Module, tx: optax.GradientTransformation,
          loss_fn: LossFn, batch_fn: Callable[[int], PyTree], *,
          num_steps: int, workdir: str | os.PathLike, seed: int = 0,
          checkpoint_every: int = 100, max_to_keep: int | None = 3,
          log_every: int = 10, progress: bool | None = None,
          mesh: Mesh | None = None) -> tuple[nnx.Module, dict[str, Any]]:
  """Trains `model` for `num_steps` updates, resuming from `workdir`.

  Args:
    model: the initialised model (its values are the fresh-start state).
    tx: the optax transformation (see `build_optimizer`).
    loss_fn: `(model, batch, rng) -> (loss, metrics)`.
    batch_fn: `step -> batch`, a pure function of the step.
    num_steps: total number of updates.
    workdir: holds `checkpoints/` and `metrics.jsonl`.
    seed: the run's seed (randomness depends only on seed and step).
    checkpoint_every: save every this many updates (and at the end).
    max_to_keep: checkpoints kept on disk (None: all).
    log_every: write metrics every this many updates (and at the end).
    progress: show a progress bar (None: only on a terminal).
    mesh: if given, replicate the state and shard batches over its "data"
      axis.

  Returns:
    `(model, metrics)`: the trained model and the last step's metrics
    (Python floats; empty if the run was already complete).
  """
  _check_args(num_steps, checkpoint_every, log_every)
  os.makedirs(workdir, exist_ok=True)
  graphdef, state = split_train_state(model, tx)
  if mesh is not None:
    state = sharding_lib.replicate(state, mesh)
  base = seed_lib.base_key(seed)
  ckpt = Checkpointer(os.path.join(workdir, CHECKPOINT_DIR),
                      save_every=checkpoint_every, max_to_keep=max_to_keep)
  with ckpt:
    start, state = _resume(ckpt, state, base)
    writer = MetricsWriter(os.path.join(workdir, METRICS_FILE),
                           resume_step=start)
    bar = ProgressBar(num_steps, initial=start, enabled=progress)
    with writer, bar:
      state, metrics = _run(graphdef, state, make_train_step(loss_fn),
                            batch_fn, base, ckpt, writer, bar, mesh,
                            start=start, num_steps=num_steps,
                            log_every=log_every)
  model, _ = nnx.merge(graphdef, state)
  return model, metrics


def _run(graphdef, state, step_fn, batch_fn, base, ckpt, writer, bar, mesh,
         *, start, num_steps, log_every):
  """The step loop; returns the final state and last logged metrics."""
  logged = {}
  for step in range(start, num_steps):
    batch = batch_fn(step)
    if mesh is not None:
      batch = sharding_lib.shard_batch(batch, mesh)
    state, metrics = step_fn(graphdef, state, batch,
                             seed_lib.step_key(base, step))
    done = step + 1
    last = done == num_steps
    if done % log_every == 0 or last:
      logged = writer.write(done, metrics)
      logged.pop("step")
    bar.update(1, metrics if done % log_every == 0 or last else None)
    # `save` copies the arrays to host before returning, so the next step
    # may donate (overwrite) them while the write continues.
    ckpt.save(done, state, rng=base, force=last)
  return state, logged
