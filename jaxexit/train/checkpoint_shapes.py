"""Whether a checkpoint fits a model: its arrays' shapes against a target's.

orbax's own check reports a differing shape without its path, so before a
restore `check_shapes` reads the step's array metadata (a small file, no
array data) and raises `CheckpointShapeMismatch` naming the first path
whose shape differs, or that only one side has.
"""

import os

import jax
import orbax.checkpoint as ocp
from etils import epath

from jaxexit.typing import PyTree


class CheckpointShapeMismatch(ValueError):
  """A checkpoint's arrays do not have the shapes of the restore target."""


def _shapes(tree: PyTree) -> dict[str, tuple[int, ...]]:
  """`{path: shape}` of every array; a typed key counts as its key data
  (as orbax stores it), and an `nnx.Variable`'s "value" is dropped."""
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    if keys and keys[-1] == "value":
      keys.pop()
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.eval_shape(jax.random.key_data, leaf)
    out["/".join(keys)] = tuple(leaf.shape)
  return out


def first_shape_difference(stored: PyTree, target: PyTree) -> str | None:
  """The first array whose shape (or presence) differs, as a sentence.

  Args:
    stored: the checkpoint's array metadata tree.
    target: the abstract restore target.

  Returns:
    None when every path has the same shape in both.
  """
  have, want = _shapes(stored), _shapes(target)
  for path, shape in want.items():
    if path not in have:
      return f"{path!r} (shape {shape}) is not in the checkpoint"
    if have[path] != shape:
      return (
        f"{path!r} has shape {have[path]} in the checkpoint but {shape} in "
        "the model"
      )
  extra = [path for path in have if path not in want]
  if extra:
    return f"{extra[0]!r} is in the checkpoint but not in the model"
  return None


def check_shapes(step_dir: str, item: str, target: PyTree) -> None:
  """Raises if `target` does not have the shapes saved in `step_dir`.

  Args:
    step_dir: one step's directory.
    item: the orbax item (subdirectory) holding the arrays.
    target: the abstract restore target of that item.

  Raises:
    CheckpointShapeMismatch: naming the step and the first differing
      path. Unreadable metadata raises nothing here: the restore itself
      then reports the damage.
  """
  path = epath.Path(step_dir) / item
  try:
    stored = ocp.StandardCheckpointHandler().metadata(path).tree
  except Exception:  # noqa: BLE001 - damage is reported by the restore.
    return
  diff = first_shape_difference(stored, target)
  if diff is not None:
    step, directory = os.path.basename(step_dir), os.path.dirname(step_dir)
    raise CheckpointShapeMismatch(
      f"checkpoint step {step} in {directory} does not fit the model: "
      f"{diff}. Restore with the configuration that saved it, or start "
      "in another directory."
    )
