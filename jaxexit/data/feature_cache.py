"""Features of a frozen backbone, computed once per split and memory-mapped.

A frozen backbone's outputs do not change between seeds, methods or
operating points, so the vision experiments run it once over each split and
train only the small modules on top. `cached_features` does that pass and
stores every named output as one `.npy` file:

  <cache dir>/features/<backbone>-<weights hash>/<resolution>px/
      <split>-<augmentation>-<inputs hash>-<outputs hash>/
      {meta.json, <name>.npy, ...}

The folder name is the key: backbone, weights file hash, resolution, split,
augmentation seed, a fingerprint of the input images and the names of the
stored outputs, so a changed subset
or another resolution lands elsewhere and is never reused by mistake;
`meta.json` repeats the key and the arrays' shapes, and every read checks
both.

Crash safety: the pass writes into `<folder>.partial/` and records the rows
it has flushed in `progress.json` after each batch; a rerun with the same
key resumes from there. Only a finished pass is renamed to `<folder>/` (one
atomic rename), so a killed pass never looks complete.

Axes: N examples, B batch; each feature keeps the trailing shape the
extractor gives it.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from jaxexit.data.cifar import default_cache_dir
from jaxexit.train.progress import ProgressBar

META = "meta.json"
PROGRESS = "progress.json"
PARTIAL_SUFFIX = ".partial"

Extractor = Callable[[np.ndarray], Mapping[str, np.ndarray]]


class CacheMismatchError(ValueError):
  """A cache folder holds features for another key than the one asked for."""


class CorruptCacheError(ValueError):
  """A cache file is unreadable, truncated or inconsistent with its meta."""


@dataclasses.dataclass(frozen=True)
class CacheKey:
  """What a feature cache was computed from.

  Attributes:
    backbone: the backbone's name (e.g. "efficientnet_lite0").
    weights_hash: hex digest of its weights file (`file_hash`).
    resolution: the square input size the images were resized to.
    split: the data split's name (e.g. "cifar10-train").
    augment_seed: the seed of the augmentation applied before the
      backbone, or None for none.
    inputs_hash: `fingerprint` of the images the pass reads.
    outputs: the stored features' names, comma-separated.
  """

  backbone: str
  weights_hash: str
  resolution: int
  split: str
  augment_seed: int | None
  inputs_hash: str
  outputs: str

  def folder(self) -> Path:
    """The key's folder, relative to `<cache dir>/features`."""
    augment = (
      "noaug" if self.augment_seed is None else f"aug{self.augment_seed}"
    )
    outputs = hashlib.sha256(self.outputs.encode()).hexdigest()[:8]
    return (
      Path(f"{self.backbone}-{self.weights_hash[:12]}")
      / f"{self.resolution}px"
      / f"{self.split}-{augment}-{self.inputs_hash[:12]}-{outputs}"
    )


def fingerprint(array: np.ndarray) -> str:
  """SHA-256 hex digest of an array's dtype, shape and bytes."""
  digest = hashlib.sha256(f"{array.dtype}{array.shape}".encode())
  digest.update(np.ascontiguousarray(array).data)
  return digest.hexdigest()


def file_hash(path: str | os.PathLike) -> str:
  """SHA-256 hex digest of a file's contents (e.g. a weights file)."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def cache_folder(key: CacheKey, cache_dir: str | os.PathLike | None) -> Path:
  """`<cache dir>/features/<key folder>`; the cache dir defaults to
  `$JAXEXIT_CACHE`, else `~/.cache/jaxexit`."""
  root = default_cache_dir() if cache_dir is None else Path(cache_dir)
  return root / "features" / key.folder()


def _write_json(path: Path, value: dict) -> None:
  """Writes `value` so that `path` is either the old or the new file."""
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "w") as f:
    json.dump(value, f, indent=1)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _rebuild_hint(folder: Path) -> str:
  return f"delete {folder} and rerun to rebuild it"


def _read_json(path: Path, folder: Path) -> dict:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise CorruptCacheError(
      f"feature cache file {path} is unreadable ({e}); {_rebuild_hint(folder)}"
    ) from e


def _check_key(meta: dict, key: CacheKey, folder: Path) -> None:
  stored = meta.get("key", {})
  expected = dataclasses.asdict(key)
  diff = [
    f"{name}: stored {stored.get(name)!r}, wanted {want!r}"
    for name, want in expected.items()
    if stored.get(name) != want
  ]
  if diff:
    raise CacheMismatchError(
      f"feature cache {folder} was written for another key ("
      + "; ".join(diff)
      + "); it is not reused. Point at the right folder or "
      + _rebuild_hint(folder)
    )


def _open_arrays(folder: Path, specs: dict, mode: str) -> dict[str, np.ndarray]:
  """Memory-maps every `<name>.npy`, checking shape and dtype."""
  out = {}
  for name, spec in specs.items():
    path = folder / f"{name}.npy"
    try:
      array = np.load(path, mmap_mode=mode)
    except (OSError, ValueError) as e:
      raise CorruptCacheError(
        f"feature cache file {path} is missing, truncated or corrupt ({e}); "
        f"{_rebuild_hint(folder)}"
      ) from e
    if list(array.shape) != spec["shape"] or str(array.dtype) != spec["dtype"]:
      raise CorruptCacheError(
        f"feature cache file {path} holds {array.dtype}{list(array.shape)}, "
        f"its meta says {spec['dtype']}{spec['shape']}; "
        f"{_rebuild_hint(folder)}"
      )
    out[name] = array
  return out


def load_features(
  folder: str | os.PathLike, key: CacheKey
) -> dict[str, np.ndarray]:
  """Memory-maps a finished cache folder (read-only), after checking it.

  Raises:
    CacheMismatchError: if the folder's key is not `key` (another backbone,
      resolution, split, augmentation or input set).
    CorruptCacheError: naming the file, if a file is missing, truncated or
      unreadable.
  """
  folder = Path(folder)
  meta = _read_json(folder / META, folder)
  _check_key(meta, key, folder)
  return _open_arrays(folder, meta["features"], "r")


def _specs(first: Mapping[str, np.ndarray], n: int, batch: int) -> dict:
  specs = {}
  for name, value in first.items():
    value = np.asarray(value)
    if value.shape[:1] != (batch,):
      raise ValueError(
        f"extractor output {name!r} has shape {value.shape}; its leading "
        f"axis must be the batch ({batch})"
      )
    specs[name] = {"shape": [n, *value.shape[1:]], "dtype": str(value.dtype)}
  return specs


def _start_or_resume(
  partial: Path, key: CacheKey, specs: dict
) -> tuple[dict[str, np.ndarray], int]:
  """The partial folder's arrays and rows already written (0 when new)."""
  meta = {"key": dataclasses.asdict(key), "features": specs}
  if (partial / PROGRESS).exists():
    try:
      old = _read_json(partial / META, partial)
      _check_key(old, key, partial)
      if old["features"] != specs:
        raise CacheMismatchError("extractor outputs changed")
      arrays = _open_arrays(partial, specs, "r+")
      rows = int(_read_json(partial / PROGRESS, partial)["rows"])
      return arrays, rows
    except (CacheMismatchError, CorruptCacheError, KeyError, ValueError):
      pass  # An unusable partial pass is started over.
  shutil.rmtree(partial, ignore_errors=True)
  partial.mkdir(parents=True)
  arrays = {
    name: np.lib.format.open_memmap(
      partial / f"{name}.npy",
      mode="w+",
      dtype=np.dtype(spec["dtype"]),
      shape=tuple(spec["shape"]),
    )
    for name, spec in specs.items()
  }
  _write_json(partial / META, meta)
  _write_json(partial / PROGRESS, {"rows": 0})
  return arrays, 0


def cached_features(
  key: CacheKey,
  images: np.ndarray,
  extract: Extractor,
  *,
  cache_dir: str | os.PathLike | None = None,
  batch_size: int = 128,
  progress: bool | None = None,
) -> dict[str, np.ndarray]:
  """Runs `extract` over `images` once and memory-maps the result.

  A finished cache for `key` is read back without running anything; an
  interrupted pass resumes at its last flushed batch.

  Args:
    key: what the features are computed from; `key.inputs_hash` must be
      `fingerprint(images)`.
    images: `[N, ...]` inputs, fed `batch_size` rows at a time (the last
      batch is padded with its last row so every call has one shape).
    extract: `[B, ...] -> {name: [B, ...]}` arrays; called on the batches.
    cache_dir: root of the cache (default `$JAXEXIT_CACHE`, else
      `~/.cache/jaxexit`).
    batch_size: B.
    progress: the `ProgressBar` switch (None: a bar on a terminal, lines
      in a log).

  Returns:
    `{name: read-only memmap [N, ...]}`.

  Raises:
    ValueError: if `key.inputs_hash` does not match `images`, or an output
      has no batch axis.
    CacheMismatchError / CorruptCacheError: as `load_features`.
  """
  if key.inputs_hash != fingerprint(images):
    raise ValueError(
      "key.inputs_hash is not fingerprint(images); a key must describe the "
      "images it caches"
    )
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1; got {batch_size}")
  folder = cache_folder(key, cache_dir)
  if (folder / META).exists():
    return load_features(folder, key)
  n = len(images)
  if n == 0:
    raise ValueError(f"no images to cache for split {key.split!r}")

  def batch(start: int) -> dict[str, np.ndarray]:
    rows = images[start : start + batch_size]
    pad = batch_size - len(rows)
    if pad:
      rows = np.concatenate([rows, np.repeat(rows[-1:], pad, axis=0)])
    return {k: np.asarray(v) for k, v in extract(rows).items()}

  first = batch(0)
  partial = folder.with_name(folder.name + PARTIAL_SUFFIX)
  arrays, done = _start_or_resume(partial, key, _specs(first, n, batch_size))
  bar = ProgressBar(
    n, initial=done, enabled=progress, desc=f"features {key.split}"
  )
  start_time, start_rows = time.perf_counter(), done
  while done < n:
    out = first if done == 0 else batch(done)
    stop = min(done + batch_size, n)
    for name, array in arrays.items():
      array[done:stop] = out[name][: stop - done]
      array.flush()
    _write_json(partial / PROGRESS, {"rows": stop})
    bar.update(stop - done)
    done = stop
  bar.close()
  seconds = time.perf_counter() - start_time
  meta = _read_json(partial / META, partial)
  meta["images_per_s"] = (done - start_rows) / max(seconds, 1e-9)
  _write_json(partial / META, meta)
  (partial / PROGRESS).unlink()
  del arrays
  os.replace(partial, folder)
  return load_features(folder, key)
