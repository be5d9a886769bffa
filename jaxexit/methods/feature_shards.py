"""Frozen-backbone features streamed to disk in shards (DYNAMAX at scale).

`dynamax_train.exit_features` keeps the [n, T, E, D] hidden states in host
memory: 671 GB for DYNAMAX's paper preset (20,000 x 512 tokens, 3 exits
and the final block, D = 4096, float32). `write_feature_shards` runs the
same pass, `rows_per_shard` rows at a time (each block through
`exit_features`), and writes each block as .npy files:

  <dir>/manifest.json              sizes, dtypes, shards, `key`
  <dir>/targets.npy, mask.npy      [n, T] (small: kept whole)
  <dir>/shard_00000_hidden.npy     [r, T, E, D]
  <dir>/shard_00000_final.npy      [r, T, D]

The manifest is rewritten after each shard, so an interrupted pass
resumes at the first missing shard. A directory written for other tokens,
lengths, exit layers or backbone (`key`) raises instead of mixing them.
`FeatureShards.open` memory-maps the shards and serves `batch(index)` as
`ExitFeatures` does (rows gathered from their shards in the order asked);
its `hidden` and `final` are `ShardedRows`, which index like arrays.

Axes: n sequences, r rows of a shard, T tokens, E exits, D width.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil

import numpy as np
from jaxtyping import ArrayLike

from jaxexit.methods.dynamax_train import ExitFeatures, exit_features
from jaxexit.typing import Int

MANIFEST = "manifest.json"
SHARD_BYTES = 2**30  # default size of one shard's hidden states
GiB = 2**30


class ShardedRows:
  """Rows split over memory-mapped arrays, indexed like one array.

  Supports `shape`, `dtype`, `len`, and `rows[i]` for an int, a slice or
  an int array (rows in the order given, as a numpy array).
  """

  def __init__(self, parts: list[np.ndarray]):
    if not parts:
      raise ValueError("ShardedRows needs at least one part")
    self._parts = parts
    self._stops = np.cumsum([len(p) for p in parts])
    self.dtype = parts[0].dtype
    self.shape = (int(self._stops[-1]), *parts[0].shape[1:])

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, index) -> np.ndarray:
    if isinstance(index, slice):
      return self.take(np.arange(len(self))[index])
    if np.ndim(index) == 0:
      return self.take(np.asarray([index]))[0]
    return self.take(np.asarray(index))

  def take(self, index: np.ndarray) -> np.ndarray:
    """Rows `index` (ints, negatives from the end), in that order."""
    index = np.asarray(index, np.int64).reshape(-1)
    n = len(self)
    if index.size and (index.min() < -n or index.max() >= n):
      raise IndexError(f"row index out of range [-{n}, {n}): {index}")
    index = np.where(index < 0, index + n, index)
    part = np.searchsorted(self._stops, index, side="right")
    out = np.empty((len(index), *self.shape[1:]), self.dtype)
    for p in np.unique(part):
      pick = np.flatnonzero(part == p)
      start = self._stops[p] - len(self._parts[p])
      rows = index[pick] - start
      order = np.argsort(rows, kind="stable")  # read each file in order
      out[pick[order]] = self._parts[p][rows[order]]
    return out


@dataclasses.dataclass(frozen=True)
class FeatureShards(ExitFeatures):
  """Features on disk (see the module doc), read as `ExitFeatures` are.

  Attributes:
    hidden: [n, T, E, D] hidden state after each exit layer.
    final: [n, T, D] output of the last block (before the final norm).
    targets: [n, T] next-token ids (in memory).
    mask: [n, T] bool, position t has a valid next token (in memory).
    directory: where the shards are.
  """

  hidden: ShardedRows
  final: ShardedRows
  targets: np.ndarray
  mask: np.ndarray
  directory: pathlib.Path | None = None

  @classmethod
  def open(cls, directory: str | os.PathLike) -> "FeatureShards":
    """Reads a directory `write_feature_shards` completed.

    Raises:
      ValueError: no manifest, or an incomplete pass (naming the shards
        written of the shards needed).
    """
    directory = pathlib.Path(directory)
    manifest = _read_manifest(directory)
    if manifest is None:
      raise ValueError(f"no {MANIFEST} in {directory}: not a feature dir")
    done, need = len(manifest["shards"]), _num_shards(manifest)
    if done != need:
      raise ValueError(
        f"{directory} holds {done} of {need} feature shards; rerun "
        "write_feature_shards to finish it"
      )
    load = lambda name: np.load(directory / name, mmap_mode="r")
    return cls(
      hidden=ShardedRows([load(s["hidden"]) for s in manifest["shards"]]),
      final=ShardedRows([load(s["final"]) for s in manifest["shards"]]),
      targets=np.load(directory / "targets.npy"),
      mask=np.load(directory / "mask.npy"),
      directory=directory,
    )

  def batch(self, index: np.ndarray) -> dict[str, np.ndarray]:
    """Rows `index` as a training batch (as `ExitFeatures.batch`)."""
    return {
      "hidden": self.hidden[index],
      "final": self.final[index],
      "targets": self.targets[index],
      "mask": self.mask[index],
    }


def _read_manifest(directory: pathlib.Path) -> dict | None:
  path = directory / MANIFEST
  return json.loads(path.read_text()) if path.exists() else None


def _num_shards(manifest: dict) -> int:
  return -(-manifest["rows"] // manifest["rows_per_shard"])


def _write_manifest(directory: pathlib.Path, manifest: dict) -> None:
  tmp = directory / (MANIFEST + ".tmp")
  tmp.write_text(json.dumps(manifest, indent=1))
  os.replace(tmp, directory / MANIFEST)  # atomic: never half a manifest


def feature_key(tokens, lengths, exit_layers, backbone, tag: str) -> str:
  """Hash of what the features are a function of (module doc)."""
  h = hashlib.sha256()
  for array in (tokens, lengths):
    h.update(np.ascontiguousarray(array).tobytes())
  config = getattr(backbone, "cfg", None)
  h.update(repr((tuple(exit_layers), repr(config), tag)).encode())
  return h.hexdigest()[:16]


def write_feature_shards(
  backbone,
  tokens: Int[ArrayLike, "n T"],
  lengths: Int[ArrayLike, "n"],
  exit_layers: tuple[int, ...],
  directory: str | os.PathLike,
  *,
  batch_size: int = 8,
  shard_bytes: int = SHARD_BYTES,
  tag: str = "",
  progress: bool | None = None,
) -> FeatureShards:
  """Runs the frozen backbone over `tokens` once, shard by shard, to disk.

  Args:
    backbone: as `dynamax_train.exit_features`.
    tokens: [n, T] right-padded sequences.
    lengths: [n] valid tokens per sequence.
    exit_layers: blocks after which hidden states are kept.
    directory: where the shards go (created; resumed when it holds a
      partial pass of the same inputs).
    batch_size: rows per backbone call.
    shard_bytes: target bytes of one shard's hidden states (a multiple of
      `batch_size` rows, at least one batch).
    tag: what else identifies the backbone (e.g. its checkpoint path); the
      key also holds its config, tokens, lengths and exit layers.
    progress: a progress bar per shard (None: only on a terminal).

  Returns:
    The written features, opened (`FeatureShards.open`).

  Raises:
    ValueError: `directory` holds features of other inputs (naming both
      keys), or bad shapes (as `exit_features`).
    OSError: the disk has less free space than the remaining shards need
      (naming both).
  """
  directory = pathlib.Path(directory)
  tokens = np.asarray(tokens, np.int32)
  lengths = np.asarray(lengths, np.int32)
  if tokens.ndim != 2 or lengths.shape != tokens.shape[:1]:
    raise ValueError(
      f"tokens must be [n, T] and lengths [n]; got "
      f"{tokens.shape} and {lengths.shape}"
    )
  n, t = tokens.shape
  key = feature_key(tokens, lengths, exit_layers, backbone, tag)
  directory.mkdir(parents=True, exist_ok=True)
  manifest = _read_manifest(directory)
  if manifest is not None and manifest["key"] != key:
    raise ValueError(
      f"{directory} holds features with key {manifest['key']}, not {key} "
      "(other tokens, lengths, exit layers or backbone); pass another "
      "directory or delete it"
    )
  if manifest is None:
    width = backbone.d_model * (len(exit_layers) + 1) * 4 * t  # per row
    per_shard = max(shard_bytes // width // batch_size, 1) * batch_size
    manifest = dict(
      key=key, rows=n, seq_len=t, exit_layers=list(exit_layers),
      rows_per_shard=per_shard, shards=[],
    )  # fmt: skip
    positions = np.arange(t)
    targets = np.concatenate([tokens[:, 1:], np.zeros_like(tokens[:, :1])], 1)
    np.save(directory / "targets.npy", targets)
    np.save(directory / "mask.npy", positions[None] < (lengths[:, None] - 1))
    _write_manifest(directory, manifest)
  per_shard = manifest["rows_per_shard"]
  for i in range(len(manifest["shards"]), _num_shards(manifest)):
    rows = slice(i * per_shard, min((i + 1) * per_shard, n))
    feats = exit_features(
      backbone,
      tokens[rows],
      lengths[rows],
      exit_layers,
      batch_size=batch_size,
      progress=progress,
    )
    if i == len(manifest["shards"]):
      _check_disk(directory, feats, n - rows.start)
    shard = {"hidden": f"shard_{i:05d}_hidden.npy"}
    shard["final"] = f"shard_{i:05d}_final.npy"
    np.save(directory / shard["hidden"], feats.hidden)
    np.save(directory / shard["final"], feats.final)
    manifest["shards"].append(shard | {"rows": feats.hidden.shape[0]})
    _write_manifest(directory, manifest)
  return FeatureShards.open(directory)


def _check_disk(directory: pathlib.Path, feats, rows_left: int) -> None:
  """OSError when the rows still to write do not fit on the disk."""
  per_row = (feats.hidden.nbytes + feats.final.nbytes) / len(feats.hidden)
  need = int(per_row * rows_left)
  free = shutil.disk_usage(directory).free
  if need > free:
    raise OSError(
      f"the {rows_left} feature rows still to write need "
      f"{need / GiB:,.1f} GiB in {directory}, which has "
      f"{free / GiB:,.1f} GiB free: short by {(need - free) / GiB:,.1f} "
      "GiB; free space or point the features elsewhere"
    )
