"""Feature cache: one pass, memory-mapped reads, resume after a kill, and
refusal of caches written for another key or left truncated."""

import dataclasses
import shutil

import numpy as np
import pytest

from jaxexit.data import feature_cache as fc

N, BATCH = 10, 4


def _images(seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 255, (N, 5, 5, 3), np.uint8)


def _key(images, **changes) -> fc.CacheKey:
  key = fc.CacheKey(
    backbone="toy",
    weights_hash="ab" * 32,
    resolution=5,
    split="train",
    augment_seed=None,
    inputs_hash=fc.fingerprint(images),
    outputs="mean,flat",
  )
  return dataclasses.replace(key, **changes)


class CountingExtractor:
  """Per-image mean and flattened pixels; fails after `fail_after` calls."""

  def __init__(self, fail_after: int | None = None):
    self.calls, self.fail_after = 0, fail_after

  def __call__(self, batch):
    self.calls += 1
    if self.fail_after is not None and self.calls > self.fail_after:
      raise KeyboardInterrupt("killed")
    x = batch.astype(np.float32)
    return {"mean": x.mean(axis=(1, 2, 3)), "flat": x.reshape(len(x), -1)}


def _expected(images):
  x = images.astype(np.float32)
  return {"mean": x.mean(axis=(1, 2, 3)), "flat": x.reshape(N, -1)}


def test_second_call_reads_the_cache_without_extracting(tmp_path):
  images = _images()
  extract = CountingExtractor()
  first = fc.cached_features(
    _key(images), images, extract, cache_dir=tmp_path, batch_size=BATCH
  )
  calls = extract.calls
  again = fc.cached_features(
    _key(images), images, extract, cache_dir=tmp_path, batch_size=BATCH
  )
  assert calls == 3 and extract.calls == calls  # ceil(10 / 4) batches.
  for name, want in _expected(images).items():
    np.testing.assert_array_equal(first[name], want)
    assert isinstance(again[name], np.memmap)
    np.testing.assert_array_equal(again[name], want)


def test_killed_pass_is_not_complete_and_resumes(tmp_path):
  images = _images()
  key = _key(images)
  with pytest.raises(KeyboardInterrupt):
    fc.cached_features(
      key,
      images,
      CountingExtractor(fail_after=2),
      cache_dir=tmp_path,
      batch_size=BATCH,
    )
  folder = fc.cache_folder(key, tmp_path)
  assert not folder.exists()
  with pytest.raises(fc.CorruptCacheError, match="meta.json"):
    fc.load_features(folder, key)
  resumed = CountingExtractor()
  out = fc.cached_features(
    key, images, resumed, cache_dir=tmp_path, batch_size=BATCH
  )
  # The first batch (shapes) and the one batch never flushed.
  assert resumed.calls == 2
  for name, want in _expected(images).items():
    np.testing.assert_array_equal(out[name], want)


def test_another_inputs_set_gets_another_folder(tmp_path):
  a, b = _images(0), _images(1)
  fc.cached_features(_key(a), a, CountingExtractor(), cache_dir=tmp_path)
  out = fc.cached_features(_key(b), b, CountingExtractor(), cache_dir=tmp_path)
  np.testing.assert_array_equal(out["mean"], _expected(b)["mean"])


def test_cache_for_another_resolution_is_refused(tmp_path):
  images = _images()
  key = _key(images)
  fc.cached_features(key, images, CountingExtractor(), cache_dir=tmp_path)
  moved = fc.cache_folder(dataclasses.replace(key, resolution=7), tmp_path)
  shutil.copytree(fc.cache_folder(key, tmp_path), moved)
  with pytest.raises(fc.CacheMismatchError, match="resolution: stored 5"):
    fc.load_features(moved, dataclasses.replace(key, resolution=7))


def test_truncated_file_names_the_file_and_the_fix(tmp_path):
  images = _images()
  key = _key(images)
  fc.cached_features(key, images, CountingExtractor(), cache_dir=tmp_path)
  path = fc.cache_folder(key, tmp_path) / "flat.npy"
  path.write_bytes(path.read_bytes()[:-20])
  with pytest.raises(fc.CorruptCacheError, match=r"flat\.npy.*delete"):
    fc.cached_features(key, images, CountingExtractor(), cache_dir=tmp_path)


def test_key_must_describe_the_images(tmp_path):
  with pytest.raises(ValueError, match="inputs_hash"):
    fc.cached_features(
      _key(_images(0)), _images(1), CountingExtractor(), cache_dir=tmp_path
    )
