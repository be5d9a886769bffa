"""Orbax checkpoints of a training run: state, step, rng key, extras.

A thin wrapper on `orbax.checkpoint.CheckpointManager`. Each checkpoint is
one directory `<workdir>/<step>` holding a single standard pytree item
`{"state": ..., "rng": ..., "extra": ...}` (absent entries are omitted).
Typed PRNG keys (`jax.random.key`, NNX `Rngs` streams) are saved as keys.

Kill safety: orbax writes each checkpoint to a temporary directory and
renames it into place only after every file is written (its atomic
"finalize"; the directory also gets a `commit_success.txt` marker). A run
killed mid-save leaves at most a temporary directory, which `latest_step()`
ignores and the next `Checkpointer` deletes; restoring then falls back to the
previous complete checkpoint. Saves are asynchronous by default: `save`
returns once the arrays are copied to host memory and the write continues in
a background thread, so `wait()` (or `close()`) before exiting. The copy is
taken before `save` returns, so the next (donating) step may reuse the
buffers.

Fingerprints and damaged steps: `save(..., metadata=...)` stores a JSON
object in orbax's per-step `custom_metadata` (the step's
`_CHECKPOINT_METADATA`, committed with the arrays), which
`jaxexit.train.train` uses for the run's fingerprint. `restore_newest` walks
back from the newest step and skips steps without orbax's commit marker
(`commit_success.txt`), with unreadable metadata, or whose arrays fail to
restore (garbage `_METADATA`, truncated array files, orbax's structure
checks). Skipped steps are never deleted: once a good step is found they are
moved into `<directory>/skipped/` (out of orbax's step listing, so neither
`max_to_keep` nor a later save at the same step touches them).

Sharded state is saved and restored sharded (orbax writes and reads each
process's shards). `restore` reads into the shardings of its abstract
target, which may be those of another mesh shape (`abstract_like(state,
shardings)`). Before reading, the stored shapes are compared with the
target's: a model whose shapes differ raises `CheckpointShapeMismatch`
naming the first differing path (it is not a damaged step, so
`restore_newest` raises it rather than skipping).
"""

import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import orbax.checkpoint as ocp

from jaxexit import checks
from jaxexit.train.checkpoint_shapes import (
  CheckpointShapeMismatch,
  check_shapes,
)
from jaxexit.typing import PyTree


class Restored(NamedTuple):
  """A restored checkpoint.

  Attributes:
    step: the checkpoint's step.
    state: the restored state, shaped like the abstract state passed in.
    rng: the restored key, or None if none was requested.
    extra: the restored extra pytree, or None if none was requested.
    metadata: the step's custom metadata (a dict, empty if none was saved);
      filled by `restore_newest` only.
  """

  step: int
  state: PyTree
  rng: Any = None
  extra: Any = None
  metadata: dict | None = None


ITEM = "default"  # the one item of every step
SKIPPED_DIR = "skipped"
COMMIT_MARKER = "commit_success.txt"


class NoUsableCheckpoint(RuntimeError):
  """Every committed checkpoint in a directory failed to restore."""


def _brief(e: BaseException, limit: int = 200) -> str:
  """The exception's type and first line (tensorstore errors run long)."""
  lines = str(e).strip().splitlines()
  first = lines[0] if lines else ""
  if len(first) > limit:
    first = first[:limit] + "..."
  return f"{type(e).__name__}: {first}"


def abstract_like(tree: PyTree, shardings: PyTree | None = None) -> PyTree:
  """`jax.ShapeDtypeStruct`s (with shardings) of a concrete pytree.

  Args:
    tree: arrays (or `jax.ShapeDtypeStruct`s).
    shardings: a sharding per array to restore into instead of the
      arrays' own (e.g. `jaxexit.sharding.state_shardings` on another
      mesh); None keeps theirs.
  """
  if shardings is None:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
    tree,
    shardings,
  )


def _item(state, rng, extra) -> dict[str, Any]:
  item = {"state": state}
  if rng is not None:
    item["rng"] = rng
  if extra is not None:
    item["extra"] = extra
  return item


class _Skip(Exception):
  """Internal: the reason one step cannot be restored."""


class Checkpointer:
  """Saves every `save_every` steps into `directory`, keeps `max_to_keep`."""

  def __init__(
    self,
    directory: str | os.PathLike,
    *,
    save_every: int = 1,
    max_to_keep: int | None = 3,
    async_save: bool = True,
  ):
    """Opens (or creates) the checkpoint directory.

    Args:
      directory: where step directories live.
      save_every: `save` writes only at multiples of this (or when forced).
      max_to_keep: how many recent checkpoints to keep (None: all).
      async_save: write in a background thread after copying to host.
    """
    checks.positive_int("save_every", save_every)
    if max_to_keep is not None:
      checks.positive_int("max_to_keep", max_to_keep)
    # Only the interval (and multi-host preemption) decide: orbax's default
    # policy would also save the first step of every (re)started run.
    policies = ocp.checkpoint_managers
    policy = policies.AnySavePolicy(
      [
        policies.FixedIntervalPolicy(save_every),
        policies.PreemptionCheckpointingPolicy(),
      ]
    )
    options = ocp.CheckpointManagerOptions(
      save_decision_policy=policy,
      max_to_keep=max_to_keep,
      cleanup_tmp_directories=True,
      enable_async_checkpointing=async_save,
    )
    self.directory = os.path.abspath(os.fspath(directory))
    self._manager = ocp.CheckpointManager(
      self.directory, item_names=(ITEM,), options=options
    )

  def save(
    self,
    step: int,
    state: PyTree,
    *,
    rng=None,
    extra=None,
    force: bool = False,
    metadata: Mapping[str, Any] | None = None,
  ) -> bool:
    """Saves at `step` if it is a multiple of `save_every` (or `force`).

    Args:
      step: the number of updates the state has seen.
      state: the pytree to save (e.g. `nnx.split` state of model+optimizer).
      rng: an optional typed key (the run's base key).
      extra: any other pytree of arrays/scalars.
      force: save even off the `save_every` grid.
      metadata: a JSON-able dict stored with this step (see `metadata`).

    Returns:
      Whether a save was started.
    """
    checks.positive_int("step", step, minimum=0)
    args = ocp.args.Composite(
      default=ocp.args.StandardSave(_item(state, rng, extra))
    )
    custom = None if metadata is None else dict(metadata)
    return self._manager.save(
      step, args=args, force=force, custom_metadata=custom
    )

  def metadata(self, step: int) -> dict:
    """The custom metadata saved with `step` ({} if none was)."""
    return dict(self._manager.metadata(step).custom_metadata or {})

  def step_dir(self, step: int) -> str:
    """The directory of `step`'s checkpoint."""
    return os.path.join(self.directory, str(step))

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Steps of all complete checkpoints, oldest first."""
    return sorted(self._manager.all_steps())

  def restore(
    self,
    step: int,
    abstract_state: PyTree,
    *,
    abstract_rng=None,
    abstract_extra=None,
  ) -> Restored:
    """Restores the checkpoint of `step` into the given abstract structure.

    Args:
      step: which checkpoint.
      abstract_state: pytree of `jax.ShapeDtypeStruct` (or concrete arrays)
        with the saved state's structure; shardings are honoured.
      abstract_rng: the key's abstract value, if one was saved.
      abstract_extra: the extra pytree's abstract value, if one was saved.

    Returns:
      A `Restored(step, state, rng, extra)`.

    Raises:
      CheckpointShapeMismatch: naming the first path whose shape differs
        between the checkpoint and `abstract_state` (or that only one of
        them has).
    """
    target = jax.tree.map(
      ocp.utils.to_shape_dtype_struct,
      _item(abstract_state, abstract_rng, abstract_extra),
    )
    check_shapes(self.step_dir(step), ITEM, target)
    args = ocp.args.Composite(default=ocp.args.StandardRestore(target))
    item = self._manager.restore(step, args=args)[ITEM]
    return Restored(step, item["state"], item.get("rng"), item.get("extra"))

  def restore_latest(
    self, abstract_state: PyTree, *, abstract_rng=None, abstract_extra=None
  ) -> Restored | None:
    """Restores the newest complete checkpoint (see `restore`), or None."""
    step = self.latest_step()
    if step is None:
      return None
    return self.restore(
      step,
      abstract_state,
      abstract_rng=abstract_rng,
      abstract_extra=abstract_extra,
    )

  def restore_newest(
    self,
    abstract_state: PyTree,
    *,
    abstract_rng=None,
    abstract_extra=None,
    check: Callable[[int, dict], None] | None = None,
    log: Callable[[str], None] = print,
  ) -> Restored | None:
    """Restores the newest good checkpoint, skipping damaged ones.

    Walks back from the newest step. A step is skipped when it lacks
    orbax's commit marker, its metadata cannot be read, or restoring it
    raises (unreadable files, orbax's checks). Once a good step is restored,
    each skipped step is moved to `<directory>/skipped/` (never deleted) and
    reported through `log`.

    Args:
      abstract_state: as in `restore`.
      abstract_rng: as in `restore`.
      abstract_extra: as in `restore`.
      check: `(step, metadata) -> None`, called on each committed step
        before its arrays are read; an exception it raises ends the walk
        (e.g. a fingerprint mismatch).
      log: receives one line per skipped step.

    Returns:
      The restored newest good step (with `metadata`), or None when there
      is no committed step.

    Raises:
      NoUsableCheckpoint: committed steps exist but none restores; nothing
        is moved, and the message lists each step's reason.
      CheckpointShapeMismatch: the newest committed step's shapes differ
        from `abstract_state`'s (see `restore`); nothing is moved.
    """
    skipped, restored = [], None
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        restored = self._restore_checked(
          step, abstract_state, abstract_rng, abstract_extra, check
        )
        break
      except _Skip as e:
        skipped.append((step, str(e)))
    if restored is None and any(
      not r.startswith("uncommitted") for _, r in skipped
    ):
      reasons = "\n".join(f"  step {s}: {r}" for s, r in skipped)
      raise NoUsableCheckpoint(
        f"no checkpoint in {self.directory} can be restored:\n{reasons}\n"
        "Nothing was deleted. Move the folder away (or use a fresh "
        "output folder) to start over."
      )
    for step, reason in skipped:
      moved = self._set_aside(step)
      log(
        f"skipping checkpoint step {step} in {self.directory}: {reason}; "
        f"moved to {moved} (not deleted)"
      )
    if skipped:
      self._manager.reload()
    return restored

  def _restore_checked(
    self, step, abstract_state, abstract_rng, abstract_extra, check
  ) -> Restored:
    """Restores one step, raising `_Skip` with the reason it is unusable."""
    if not os.path.exists(os.path.join(self.step_dir(step), COMMIT_MARKER)):
      raise _Skip(f"uncommitted (no orbax commit marker {COMMIT_MARKER})")
    try:
      metadata = self.metadata(step)
    except Exception as e:  # noqa: BLE001 - any read failure means skip.
      raise _Skip(f"unreadable step metadata ({_brief(e)})") from e
    if check is not None:
      check(step, metadata)
    try:
      restored = self.restore(
        step,
        abstract_state,
        abstract_rng=abstract_rng,
        abstract_extra=abstract_extra,
      )
    except CheckpointShapeMismatch:
      raise
    except Exception as e:  # noqa: BLE001 - tensorstore raises many types.
      raise _Skip(f"unreadable or failing orbax's checks ({_brief(e)})") from e
    return restored._replace(metadata=metadata)

  def _set_aside(self, step: int) -> str:
    """Moves a step's directory into `skipped/` under a free name."""
    target_dir = os.path.join(self.directory, SKIPPED_DIR)
    os.makedirs(target_dir, exist_ok=True)
    target, n = os.path.join(target_dir, str(step)), 1
    while os.path.exists(target):
      target, n = os.path.join(target_dir, f"{step}.{n}"), n + 1
    os.replace(self.step_dir(step), target)
    return target

  def wait(self) -> None:
    """Blocks until background saves are written and finalized."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
