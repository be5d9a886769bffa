"""DYNAMAX features on disk equal the in-memory path, row for row."""

import json
import shutil

import numpy as np
import pytest

from jaxexit.methods import dynamax_train, feature_shards
from tests.jaxexit.methods.dynamax_test import _backbone, _classifiers
from tests.tiers import slow

EXITS = (2, 4)


def _tokens(n=13, t=10):
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 32, (n, t)).astype(np.int32)
  lengths = rng.integers(3, t + 1, n).astype(np.int32)
  return tokens, lengths


def _write(backbone, tmp_path, **kw):
  tokens, lengths = _tokens()
  kw = dict(batch_size=2, shard_bytes=1, progress=False) | kw
  return feature_shards.write_feature_shards(
    backbone, tokens, lengths, EXITS, tmp_path / "features", **kw
  )


def test_sharded_rows_index_like_the_concatenated_array(tmp_path):
  rng = np.random.default_rng(1)
  whole = rng.normal(size=(11, 3, 2)).astype(np.float32)
  parts = []
  for i, (a, b) in enumerate(((0, 4), (4, 5), (5, 11))):
    np.save(tmp_path / f"{i}.npy", whole[a:b])
    parts.append(np.load(tmp_path / f"{i}.npy", mmap_mode="r"))
  rows = feature_shards.ShardedRows(parts)
  assert rows.shape == whole.shape and len(rows) == 11
  for index in (
    np.array([10, 0, 4, 4, 7, -1]),
    slice(2, 9),
    slice(None, None, -3),
    3,
    -11,
  ):
    np.testing.assert_array_equal(rows[index], whole[index], str(index))
  for bad in (11, np.array([0, -12])):
    with pytest.raises(IndexError, match="out of range"):
      rows[bad]


@slow
def test_shards_equal_the_in_memory_features(tmp_path):
  backbone = _backbone()
  tokens, lengths = _tokens()
  ref = dynamax_train.exit_features(
    backbone, tokens, lengths, EXITS, batch_size=2, progress=False
  )
  disk = _write(backbone, tmp_path)
  manifest = json.loads((tmp_path / "features" / "manifest.json").read_text())
  # shard_bytes=1: one batch (2 rows) per shard, the last one short.
  assert [s["rows"] for s in manifest["shards"]] == [2] * 6 + [1]
  assert disk.hidden.shape == ref.hidden.shape == (13, 10, 2, 16)
  assert disk.final.shape == ref.final.shape
  index = np.array([12, 0, 5, 5, 3, 11, 1])  # across shards, repeated
  got, want = disk.batch(index), ref.batch(index)
  assert set(got) == set(want)
  for name in want:
    np.testing.assert_allclose(got[name], want[name], atol=1e-6, err_msg=name)
    assert got[name].dtype == want[name].dtype, name
  np.testing.assert_allclose(disk.hidden[3:9], ref.hidden[3:9], atol=1e-6)
  np.testing.assert_allclose(disk.final[-1], ref.final[-1], atol=1e-6)
  with pytest.raises(IndexError, match="out of range"):
    disk.hidden[np.array([13])]
  # What reads features reads both alike.
  heads = _classifiers("mlp")
  np.testing.assert_allclose(
    dynamax_train.exit_agreement(backbone, heads, disk, batch_size=3),
    dynamax_train.exit_agreement(backbone, heads, ref, batch_size=3),
  )


@slow
def test_interrupted_pass_resumes_and_other_inputs_are_refused(tmp_path):
  backbone = _backbone()
  full = _write(backbone, tmp_path)
  want = full.batch(np.arange(13))
  folder = tmp_path / "features"
  manifest = json.loads((folder / "manifest.json").read_text())
  # Cut the pass after 3 shards: the reader refuses it, a rerun finishes.
  manifest["shards"] = manifest["shards"][:3]
  (folder / "manifest.json").write_text(json.dumps(manifest))
  for i in range(3, 7):
    (folder / f"shard_{i:05d}_hidden.npy").unlink()
  with pytest.raises(ValueError, match="holds 3 of 7 feature shards"):
    feature_shards.FeatureShards.open(folder)
  kept = (folder / "shard_00000_hidden.npy").stat().st_mtime_ns
  resumed = _write(backbone, tmp_path)
  assert (folder / "shard_00000_hidden.npy").stat().st_mtime_ns == kept
  for name, value in resumed.batch(np.arange(13)).items():
    np.testing.assert_array_equal(value, want[name], err_msg=name)
  with pytest.raises(ValueError, match="holds features with key"):
    _write(backbone, tmp_path, tag="another backbone")


@slow
def test_too_little_disk_names_the_shortfall(tmp_path, monkeypatch):
  usage = shutil.disk_usage(tmp_path)._replace(free=1000)
  monkeypatch.setattr(shutil, "disk_usage", lambda path: usage)
  with pytest.raises(OSError, match=r"13 feature rows.*short by"):
    _write(_backbone(), tmp_path)
