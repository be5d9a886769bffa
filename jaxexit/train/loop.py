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

Fingerprints (see `jaxexit.train.fingerprint`): every checkpoint stores the
caller's `fingerprint` plus `num_steps`, `seed` and `jaxexit_version`. On
resume a differing field raises `FingerprintMismatch` naming each field,
unless `force_resume=True`. Checkpoints made before fingerprints existed
resume with a warning. Damaged newest steps are skipped (see
`Checkpointer.restore_newest`). Every such event is printed and appended to
`<workdir>/events.log`.

On a mesh (`mesh=`, e.g. `jaxexit.sharding.make_mesh("data=2,fsdp=2,
tensor=2")`), the train state is placed with the family's logical axes
and the rules (`jaxexit.sharding.state_shardings`: parameters on
fsdp/tensor, optimizer moments following their parameters), every batch
is split on B over the rules' "batch" axes (default ("data", "fsdp")),
and the step is jitted with these in/out shardings, donating the state.
Checkpoints are saved and restored sharded: each process writes and
reads its own shards, and a run resumes onto another mesh shape (the
restore targets the new mesh's shardings).
"""

import contextlib
import datetime
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxexit import checks
from jaxexit import sharding as sharding_lib
from jaxexit.sharding.logical import Family
from jaxexit.sharding.rules import Rules
from jaxexit.train import fingerprint as fp_lib
from jaxexit.train import precision as precision_lib
from jaxexit.train import seed as seed_lib
from jaxexit.train.checkpoint import Checkpointer, abstract_like
from jaxexit.train.metrics import MetricsWriter
from jaxexit.train.precision import Precision
from jaxexit.train.progress import ProgressBar
from jaxexit.train.step import (
  LossFn,
  make_sharded_train_step,
  make_train_step,
  split_train_state,
)
from jaxexit.typing import PyTree

METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
EVENTS_FILE = "events.log"


def run_fingerprint(
  fingerprint: Mapping[str, Any] | None, *, num_steps: int, seed: int
) -> dict[str, Any]:
  """The fingerprint `train` stores: the caller's, plus steps/seed/version.

  Args:
    fingerprint: the caller's part (model config, method, data description
      and hash, optimizer and schedule); see `jaxexit.train.fingerprint`.
    num_steps: the run's number of updates.
    seed: the run's seed.

  Returns:
    A JSON-able dict (the loop's fields override the caller's).
  """
  out = fp_lib.to_jsonable(dict(fingerprint or {}))
  out.update(
    num_steps=num_steps, seed=seed, jaxexit_version=fp_lib.jaxexit_version()
  )
  return out


def _event_logger(workdir: str) -> Callable[[str], None]:
  """Prints a line and appends it, timestamped, to `workdir/events.log`
  (on process 0 only)."""
  path = os.path.join(workdir, EVENTS_FILE)

  def log(message: str) -> None:
    if not sharding_lib.is_main_process():
      return
    print(message, flush=True)
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    with open(path, "a", encoding="utf-8") as f:
      f.write(f"{stamp} {message}\n")

  return log


def _fingerprint_check(ckpt, fingerprint, force_resume, log):
  """`check(step, metadata)` for `restore_newest`: compare fingerprints."""

  def check(step: int, metadata: dict) -> None:
    old = metadata.get("fingerprint")
    if old is None:
      log(
        f"warning: the checkpoint at step {step} in {ckpt.directory} has "
        "no fingerprint (made before fingerprints); resuming without "
        "checking that the configuration is the same"
      )
      return
    diffs = fp_lib.differences(old, fingerprint)
    if not diffs:
      return
    err = fp_lib.mismatch_error(step, ckpt.directory, diffs)
    if not force_resume:
      raise err
    fields = ", ".join(f for f, _, _ in diffs)
    log(
      f"force_resume: continuing from step {step} in {ckpt.directory} "
      f"although these fields differ: {fields}"
    )

  return check


def _resume(
  ckpt: Checkpointer, state, base, *, fingerprint, force_resume, num_steps, log
):
  """Returns (start_step, state) from the newest good checkpoint, if any."""
  restored = ckpt.restore_newest(
    abstract_like(state),
    abstract_rng=abstract_like(base),
    check=_fingerprint_check(ckpt, fingerprint, force_resume, log),
    log=log,
  )
  if restored is None:
    return 0, state
  if not force_resume and not np.array_equal(
    jax.random.key_data(restored.rng), jax.random.key_data(base)
  ):
    raise fp_lib.mismatch_error(
      restored.step,
      ckpt.directory,
      [("seed", "another seed", fingerprint["seed"])],
    )
  if restored.step >= num_steps:
    log(
      f"reusing the finished checkpoint at step {restored.step} in "
      f"{ckpt.directory}"
    )
  return restored.step, restored.state


def _split(model, tx, precision):
  """`split_train_state` in `precision` (None: as the model is): the
  optimizer in float32 for low-precision parameters (initialised from the
  model's values), then the parameters cast to `precision.param_dtype`."""
  if precision is None:
    return split_train_state(model, tx)
  precision_lib.check_compute_dtype(model, precision)
  if not precision.low_precision_params:
    return split_train_state(model, tx)
  tx = precision_lib.float32_optimizer(
    tx, master_weights=precision.master_weights
  )
  graphdef, state = split_train_state(model, tx)
  state[0] = precision_lib.cast_params(state[0], precision.param_dtype)
  return graphdef, state


def _on_mesh(loss_fn, state, mesh, family, rules, remat, log):
  """`(state, step_fn, place_batch)`: the state placed on `mesh` by its
  family's logical axes and `rules`, the step jitted with them, and the
  batch placement."""
  rules = (
    sharding_lib.default_rules(mesh.axis_names) if rules is None else rules
  )
  if family is None:
    try:
      family = sharding_lib.infer_family(state[0])
    except ValueError as e:
      log(f"warning: the train state is replicated on the mesh: {e}")
  if family is None:
    shardings = jax.tree.map(lambda _: NamedSharding(mesh, P()), state)
  else:
    shardings = sharding_lib.state_shardings(state, mesh, rules, family=family)
  batch_axes = rules.get("batch")
  step_fn = make_sharded_train_step(
    loss_fn,
    shardings,
    NamedSharding(mesh, P(batch_axes) if batch_axes else P()),
    remat=remat,
  )

  def place_batch(batch):
    if not batch_axes:
      return sharding_lib.replicate(batch, mesh)
    return sharding_lib.shard_batch(batch, mesh, batch_axes)

  return jax.device_put(state, shardings), step_fn, place_batch


def _check_args(num_steps, checkpoint_every, log_every) -> None:
  checks.positive_int("num_steps", num_steps)
  checks.positive_int("checkpoint_every", checkpoint_every)
  checks.positive_int("log_every", log_every)


def train(
  model: nnx.Module,
  tx: optax.GradientTransformation,
  loss_fn: LossFn,
  batch_fn: Callable[[int], PyTree],
  *,
  num_steps: int,
  workdir: str | os.PathLike,
  seed: int = 0,
  checkpoint_every: int = 100,
  max_to_keep: int | None = 3,
  log_every: int = 10,
  progress: bool | None = None,
  mesh: Mesh | None = None,
  fingerprint: Mapping[str, Any] | None = None,
  force_resume: bool = False,
  family: Family | None = None,
  rules: Rules | None = None,
  precision: Precision | None = None,
) -> tuple[nnx.Module, dict[str, Any]]:
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
    mesh: if given, shard the state by `family` and `rules` and every
      batch over the rules' "batch" mesh axes (see the module docstring);
      each batch's B must divide by those axes' device count.
    fingerprint: what determines the run besides `num_steps` and `seed`
      (model config, method, data description with a hash of the example
      ids or files, optimizer and schedule); JSON-able values, dataclasses
      and arrays (hashed). Stored with every checkpoint and compared on
      resume.
    force_resume: resume even when the stored fingerprint differs (the
      differing fields are logged); later checkpoints store the new one.
    family: with `mesh`, the model's logical axis table: a key of
      `jaxexit.sharding.FAMILY_AXES` or a table of `(pattern, axes)` rows.
      None: `jaxexit.sharding.infer_family` of the model's state; a state
      no family fits is replicated (logged).
    rules: with `mesh`, logical axis -> mesh axes (None:
      `jaxexit.sharding.default_rules(mesh.axis_names)`); its "batch"
      entry splits the batches (absent: replicated).
    precision: parameter and compute dtypes, float32 master weights and
      per-block remat (`jaxexit.train.Precision`); the model must compute
      in its `compute_dtype`. None: the model's own dtypes, no remat. A
      non-default one joins the fingerprint.

  Returns:
    `(model, metrics)`: the trained model and the last step's metrics
    (Python floats; empty if the run was already complete).

  Raises:
    FingerprintMismatch: the newest good checkpoint was made with another
      fingerprint (or seed) and `force_resume` is False.
    NoUsableCheckpoint: checkpoints exist but none can be restored.
  """
  _check_args(num_steps, checkpoint_every, log_every)
  os.makedirs(workdir, exist_ok=True)
  if precision not in (None, Precision()):
    fingerprint = {**(fingerprint or {}), "precision": precision}
  run_fp = run_fingerprint(fingerprint, num_steps=num_steps, seed=seed)
  log = _event_logger(os.fspath(workdir))
  graphdef, state = _split(model, tx, precision)
  remat = None if precision is None else precision.remat
  step_fn = make_train_step(loss_fn, remat=remat)
  place_batch = None
  if mesh is not None:
    state, step_fn, place_batch = _on_mesh(
      loss_fn, state, mesh, family, rules, remat, log
    )
  base = seed_lib.base_key(seed)
  if mesh is not None:  # a global array, as multi-host orbax saves need
    base = sharding_lib.replicate(base, mesh)
  ckpt = Checkpointer(
    os.path.join(workdir, CHECKPOINT_DIR),
    save_every=checkpoint_every,
    max_to_keep=max_to_keep,
  )
  with ckpt:
    start, state = _resume(
      ckpt,
      state,
      base,
      fingerprint=run_fp,
      force_resume=force_resume,
      num_steps=num_steps,
      log=log,
    )
    main = sharding_lib.is_main_process()
    writer = MetricsWriter(
      os.path.join(workdir, METRICS_FILE), resume_step=start, enabled=main
    )
    bar = ProgressBar(
      num_steps, initial=start, enabled=progress if main else False
    )
    on_mesh = contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)
    with writer, bar, on_mesh:
      state, metrics = _run(
        graphdef,
        state,
        step_fn,
        batch_fn,
        base,
        ckpt,
        writer,
        bar,
        place_batch,
        start=start,
        num_steps=num_steps,
        log_every=log_every,
        metadata={"fingerprint": run_fp},
      )
  model, _ = nnx.merge(graphdef, state)
  return model, metrics


def _run(
  graphdef,
  state,
  step_fn,
  batch_fn,
  base,
  ckpt,
  writer,
  bar,
  place_batch,
  *,
  start,
  num_steps,
  log_every,
  metadata,
):
  """The step loop; returns the final state and last logged metrics."""
  logged = {}
  for step in range(start, num_steps):
    batch = batch_fn(step)
    if place_batch is not None:
      batch = place_batch(batch)
    state, metrics = step_fn(
      graphdef, state, batch, seed_lib.step_key(base, step)
    )
    done = step + 1
    last = done == num_steps
    if done % log_every == 0 or last:
      logged = writer.write(done, metrics)
      logged.pop("step")
    bar.update(1, metrics if done % log_every == 0 or last else None)
    # `save` copies the arrays to host before returning, so the next step
    # may donate (overwrite) them while the write continues.
    ckpt.save(done, state, rng=base, force=last, metadata=metadata)
  return state, logged
