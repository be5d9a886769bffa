"""Run fingerprints: what determines a checkpoint, compared on resume.

A fingerprint is a JSON object describing everything a checkpoint's values
depend on: model config, method, data (task, split sizes, a hash of the
example ids or files), optimizer and schedule, number of steps, seed and the
jaxexit version. `jaxexit.train.train` stores it beside every checkpoint (in
orbax's per-step `custom_metadata`, written in the same commit as the
arrays) and refuses to resume from a checkpoint whose fingerprint differs,
naming each differing field, unless `force_resume=True`.

Callers build the caller-side part from plain values, dataclasses (frozen
configs), mappings, sequences, numpy scalars and arrays (hashed with
`fingerprint_array`); anything else (functions, modules) is refused, because
its `repr` would change from run to run and make every resume a mismatch.
"""

import dataclasses
import enum
import hashlib
import importlib.metadata
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

HASH_CHARS = 16
ABSENT = "<absent>"


class FingerprintMismatch(ValueError):
  """A checkpoint was made under another configuration.

  Attributes:
    differences: `(field, old, new)` for each differing field; `field` is a
      dotted path into the fingerprint, `old`/`new` the JSON values (or
      `ABSENT`).
  """

  def __init__(self, message: str, differences: list[tuple[str, Any, Any]]):
    super().__init__(message)
    self.differences = differences


def fingerprint_array(x) -> str:
  """A short content hash of an array (e.g. example ids), dtype and shape.

  Args:
    x: an array-like; string and object arrays are hashed through their
      JSON form, numeric ones through their bytes.

  Returns:
    The first 16 hex characters of a sha256 over dtype, shape and values.
  """
  arr = np.asarray(x)
  h = hashlib.sha256()
  if arr.dtype == object or arr.dtype.kind in "US":
    h.update(f"json{arr.shape}".encode())
    h.update(json.dumps(arr.tolist(), sort_keys=True, default=str).encode())
  else:
    arr = np.ascontiguousarray(arr)
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.tobytes())
  return h.hexdigest()[:HASH_CHARS]


def fingerprint_file(path: str | os.PathLike) -> str:
  """A short sha256 of a file's bytes (first 16 hex characters)."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()[:HASH_CHARS]


def jaxexit_version() -> str:
  """The installed jaxexit version ("unknown" when not installed)."""
  try:
    return importlib.metadata.version("jaxexit")
  except importlib.metadata.PackageNotFoundError:
    return "unknown"


def to_jsonable(value: Any, path: str = "fingerprint") -> Any:
  """Turns a fingerprint (or part of one) into plain JSON values.

  Args:
    value: a dataclass, mapping, sequence, scalar, enum, dtype (as its
      name) or numpy array.
    path: where `value` sits, for the error message.

  Returns:
    Nested dicts (string keys), lists, str, int, float, bool and None;
    arrays become their `fingerprint_array` hash.

  Raises:
    TypeError: for values without a stable JSON form (functions, modules),
      naming their path.
  """
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  if isinstance(value, enum.Enum):
    return to_jsonable(value.value, path)
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return fingerprint_array(value)
  if isinstance(value, os.PathLike):
    return os.fspath(value)
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
  if isinstance(value, Mapping):
    return {str(k): to_jsonable(v, f"{path}.{k}") for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_jsonable(v, f"{path}[{i}]") for i, v in enumerate(value)]
  if isinstance(value, (type, np.dtype)):  # a dtype (jnp.float32, ...)
    try:
      return np.dtype(value).name
    except TypeError:
      pass
  raise TypeError(
    f"{path} has no stable JSON form ({type(value).__name__}: "
    f"{value!r:.80}); pass its configuration or a hash instead"
  )


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict) and tree:
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}.{k}" if prefix else k))
    return out
  return {prefix: tree}


def differences(
  old: Mapping[str, Any], new: Mapping[str, Any]
) -> list[tuple[str, Any, Any]]:
  """`(field, old, new)` for each leaf that differs, sorted by field.

  Leaves are compared by their JSON text, so NaN equals NaN and a tuple
  equals the list it was stored as.
  """
  a, b = _flatten(to_jsonable(old)), _flatten(to_jsonable(new))
  out = []
  for field in sorted(set(a) | set(b)):
    x, y = a.get(field, ABSENT), b.get(field, ABSENT)
    if json.dumps(x, sort_keys=True) != json.dumps(y, sort_keys=True):
      out.append((field, x, y))
  return out


def mismatch_error(
  step: int, directory: str, diffs: list[tuple[str, Any, Any]]
) -> FingerprintMismatch:
  """The error for resuming under a changed configuration."""
  lines = "\n".join(
    f"  {field}: {old!r} (checkpoint) != {new!r} (this run)"
    for field, old, new in diffs
  )
  return FingerprintMismatch(
    f"the checkpoint at step {step} in {directory} was made with another "
    f"configuration; differing fields:\n{lines}\n"
    "Either write to a fresh output folder (a new --out / workdir), or "
    "pass force_resume=True (--force-resume) to continue from this "
    "checkpoint under the new settings knowingly.",
    diffs,
  )
