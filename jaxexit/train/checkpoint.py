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
"""

import os
from typing import Any, NamedTuple

import jax
import orbax.checkpoint as ocp

from jaxexit import checks
from jaxexit.typing import PyTree


class Restored(NamedTuple):
  """A restored checkpoint.

  Attributes:
    step: the checkpoint's step.
    state: the restored state, shaped like the abstract state passed in.
    rng: the restored key, or None if none was requested.
    extra: the restored extra pytree, or None if none was requested.
  """

  step: int
  state: PyTree
  rng: Any = None
  extra: Any = None


def abstract_like(tree: PyTree) -> PyTree:
  """`jax.ShapeDtypeStruct`s (with shardings) of a concrete pytree."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _item(state, rng, extra) -> dict[str, Any]:
  item = {"state": state}
  if rng is not None:
    item["rng"] = rng
  if extra is not None:
    item["extra"] = extra
  return item


class Checkpointer:
  """Saves every `save_every` steps into `directory`, keeps `max_to_keep`."""

  def __init__(self, directory: str | os.PathLike, *, save_every: int = 1,
               max_to_keep: int | None = 3, async_save: bool = True):
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
    policy = policies.AnySavePolicy([
        policies.FixedIntervalPolicy(save_every),
        policies.PreemptionCheckpointingPolicy()])
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=policy, max_to_keep=max_to_keep,
        cleanup_tmp_directories=True, enable_async_checkpointing=async_save)
    self.directory = os.path.abspath(os.fspath(directory))
    self._manager = ocp.CheckpointManager(
        self.directory, item_names=("default",), options=options)

  def save(self, step: int, state: PyTree, *, rng=None, extra=None,
           force: bool = False) -> bool:
    """Saves at `step` if it is a multiple of `save_every` (or `force`).

    Args:
      step: the number of updates the state has seen.
      state: the pytree to save (e.g. `nnx.split` state of model+optimizer).
      rng: an optional typed key (the run's base key).
      extra: any other pytree of arrays/scalars.
      force: save even off the `save_every` grid.

    Returns:
      Whether a save was started.
    """
    checks.positive_int("step", step, minimum=0)
    args = ocp.args.Composite(
        default=ocp.args.StandardSave(_item(state, rng, extra)))
    return self._manager.save(step, args=args, force=force)

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Steps of all complete checkpoints, oldest first."""
    return sorted(self._manager.all_steps())

  def restore(self, step: int, abstract_state: PyTree, *,
              abstract_rng=None, abstract_extra=None) -> Restored:
    """Restores the checkpoint of `step` into the given abstract structure.

    Args:
      step: which checkpoint.
      abstract_state: pytree of `jax.ShapeDtypeStruct` (or concrete arrays)
        with the saved state's structure; shardings are honoured.
      abstract_rng: the key's abstract value, if one was saved.
      abstract_extra: the extra pytree's abstract value, if one was saved.

    Returns:
      A `Restored(step, state, rng, extra)`.
    """
    target = jax.tree.map(
        ocp.utils.to_shape_dtype_struct,
        _item(abstract_state, abstract_rng, abstract_extra))
    args = ocp.args.Composite(default=ocp.args.StandardRestore(target))
    item = self._manager.restore(step, args=args)["default"]
    return Restored(step, item["state"], item.get("rng"), item.get("extra"))

  def restore_latest(self, abstract_state: PyTree, *, abstract_rng=None,
                     abstract_extra=None) -> Restored | None:
    """Restores the newest complete checkpoint (see `restore`), or None."""
    step = self.latest_step()
    if step is None:
      return None
    return self.restore(step, abstract_state, abstract_rng=abstract_rng,
                        abstract_extra=abstract_extra)

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
