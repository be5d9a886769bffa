"""Tests for jaxexit.data.cifar: archive decoding, cache, tfds, val split."""

import dataclasses
import io
import os
import sys
import tarfile
import types
from pathlib import Path

import jaxtyping
import numpy as np
import pytest
from PIL import Image

from jaxexit.data import bundled, cifar, location
from tests.tiers import slow

# /work/main/tests/jaxexit/data/cifar_test.py -> /work/shared/data
SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
REAL_DATA = Path(os.environ.get(location.ENV_VAR) or SHARED_DATA)
# Solid colours survive JPEG almost exactly, so pixels identify each image.
COLOURS = {
  ("cat", "0.jpg"): (200, 30, 30),
  ("cat", "1.jpg"): (30, 200, 30),
  ("airplane", "0.jpg"): (30, 30, 200),
  ("airplane", "1.jpg"): (220, 220, 40),
  ("airplane", "2.jpg"): (40, 220, 220),
}


def _jpeg(colour=(0, 0, 0), size=32, mode="RGB") -> bytes:
  buf = io.BytesIO()
  Image.new(mode, (size, size), colour[0] if mode == "L" else colour).save(
    buf, format="JPEG", quality=95
  )
  return buf.getvalue()


def _archive(root: Path, split: str = "train", members=None) -> Path:
  """Writes `<root>/cifar10/cifar10_<split>_jpg.tar.gz` from name -> bytes."""
  if members is None:
    members = {
      f"{split}/{c}/{f}": _jpeg(rgb)
      for (c, f), rgb in reversed(COLOURS.items())
    }  # archive order != sorted order
  path = root / "cifar10" / f"cifar10_{split}_jpg.tar.gz"
  path.parent.mkdir(parents=True, exist_ok=True)
  with tarfile.open(path, "w:gz") as tar:
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return path


def _load(root: Path, **kw) -> cifar.ImageSplit:
  kw.setdefault("split", "train")
  return cifar.load_cifar(
    "cifar10", data_dir=root, cache_dir=root / "cache", **kw
  )


# ---------------------------------------------------------------- decoding


def test_files_are_decoded_in_sorted_order(tmp_path):
  _archive(tmp_path)
  data = _load(tmp_path, source="files")
  assert data.class_names == ("airplane", "cat")
  assert len(data) == 5 and data.images.shape == (5, 32, 32, 3)
  assert data.images.dtype == np.uint8 and data.labels.dtype == np.int32
  np.testing.assert_array_equal(data.labels, [0, 0, 0, 1, 1])
  expected = [COLOURS[k] for k in sorted(COLOURS)]
  np.testing.assert_allclose(data.images.mean(axis=(1, 2)), expected, atol=3)


def test_auto_prefers_files(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  _archive(tmp_path, "test", {"test/dog/a.jpg": _jpeg()})
  data = _load(tmp_path, split="test")
  assert data.class_names == ("dog",) and len(data) == 1


def test_second_load_reads_the_cache(tmp_path, monkeypatch):
  _archive(tmp_path)
  first = _load(tmp_path)
  assert len(list((tmp_path / "cache" / "cifar").glob("*.npz"))) == 1

  def fail(*args, **kwargs):
    raise AssertionError("tarfile.open called on a cached archive")

  monkeypatch.setattr(tarfile, "open", fail)
  second = _load(tmp_path)
  np.testing.assert_array_equal(first.images, second.images)
  np.testing.assert_array_equal(first.labels, second.labels)
  assert first.class_names == second.class_names


def test_changed_archive_is_decoded_again(tmp_path):
  _archive(tmp_path)
  assert len(_load(tmp_path)) == 5
  _archive(tmp_path, members={"train/x/a.jpg": _jpeg()})
  data = _load(tmp_path)
  assert data.class_names == ("x",) and len(data) == 1


def test_cache_dir_defaults_to_env(tmp_path, monkeypatch):
  monkeypatch.setenv(cifar.CACHE_ENV_VAR, str(tmp_path / "env_cache"))
  _archive(tmp_path)
  cifar.load_cifar("cifar10", "train", data_dir=tmp_path)
  assert list((tmp_path / "env_cache" / "cifar").glob("cifar10_train_*.npz"))
  assert not [p for p in tmp_path.rglob("*.tmp")]


def test_unreadable_cache_is_replaced(tmp_path):
  _archive(tmp_path)
  _load(tmp_path)
  (cached,) = (tmp_path / "cache" / "cifar").glob("*.npz")
  cached.write_bytes(b"not a zip")
  with pytest.warns(UserWarning, match="unreadable cache"):
    assert len(_load(tmp_path)) == 5
  assert len(_load(tmp_path)) == 5  # rewritten: no warning now


# ---------------------------------------------------------------- corruption


def test_truncated_archive(tmp_path):
  big = {f"train/c/{i}.jpg": os.urandom(4000) for i in range(20)}
  path = _archive(tmp_path, members=big)
  path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
  with pytest.raises(cifar.CorruptDataError, match="truncated") as e:
    _load(tmp_path)
  assert str(path) in str(e.value) and "train/c/" in str(e.value)


def test_not_gzip(tmp_path):
  path = _archive(tmp_path)
  path.write_bytes(b"this is not a gzip file" * 10)
  with pytest.raises(cifar.CorruptDataError, match="not a gzip") as e:
    _load(tmp_path)
  assert str(path) in str(e.value)


def test_corrupt_gzip_body_is_detected(tmp_path):
  big = {f"train/c/{i}.jpg": os.urandom(4000) for i in range(20)}
  path = _archive(tmp_path, members=big)
  raw = bytearray(path.read_bytes())
  raw[len(raw) // 2 : len(raw) // 2 + 200] = bytes(200)
  path.write_bytes(bytes(raw))
  with pytest.raises(cifar.CorruptDataError, match=str(path)):
    _load(tmp_path)


def test_garbage_member(tmp_path):
  path = _archive(
    tmp_path,
    members={"train/a/good.jpg": _jpeg(), "train/b/bad.jpg": b"garbage bytes"},
  )
  with pytest.raises(cifar.CorruptDataError, match="train/b/bad.jpg") as e:
    _load(tmp_path)
  assert str(path) in str(e.value)


@pytest.mark.parametrize("size,mode", [(16, "RGB"), (32, "L")])
def test_unexpected_image_size_or_mode(tmp_path, size, mode):
  _archive(tmp_path, members={"train/a/odd.jpg": _jpeg(size=size, mode=mode)})
  with pytest.raises(cifar.CorruptDataError, match=f"train/a/odd.jpg.*{mode}"):
    _load(tmp_path)


@pytest.mark.parametrize(
  "name", ["train/loose.jpg", "test/a/0.jpg", "train/a/b/0.jpg"]
)
def test_unexpected_member_layout(tmp_path, name):
  _archive(tmp_path, members={name: _jpeg()})
  with pytest.raises(cifar.CorruptDataError, match=name):
    _load(tmp_path)


# ---------------------------------------------------------------- arguments


def test_missing_archive_raises_data_not_found(tmp_path):
  with pytest.raises(location.DataNotFoundError, match="cifar10"):
    _load(tmp_path, source="files", use_bundled=False)


def test_auto_without_files_or_tfds(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(location.DataNotFoundError) as e:
    _load(tmp_path, use_bundled=False)
  assert isinstance(e.value, cifar.TfdsUnavailableError)
  assert "Paths tried" in str(e.value) and "tensorflow-datasets" in str(e.value)


# ---------------------------------------------------------------- bundled


@pytest.mark.parametrize("source", ["files", "auto"])
def test_bundled_subset_when_the_data_dir_lacks_cifar(
  tmp_path, monkeypatch, capsys, source
):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  data = _load(tmp_path, split="test", source=source)
  assert data.images.shape == (1000, 32, 32, 3) and data.subset_of == 10000
  np.testing.assert_array_equal(np.bincount(data.labels), [100] * 10)
  assert data.class_names[:2] == ("airplane", "automobile")
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "1,000-image subset" in err
  assert f"not in {tmp_path / 'cifar10'}" in err
  assert "100 per class of the 10,000" in err


def test_bundled_train_subset_has_500_per_class(tmp_path):
  data = _load(tmp_path, split="train", source="files")
  assert len(data) == 5000 and data.subset_of == 50000
  np.testing.assert_array_equal(np.bincount(data.labels), [500] * 10)


def test_data_dir_wins_over_the_bundled_subset(tmp_path, capsys):
  _archive(tmp_path, "test", {"test/dog/a.jpg": _jpeg()})
  data = _load(tmp_path, split="test")
  assert len(data) == 1 and data.subset_of is None
  assert capsys.readouterr().err == ""


@pytest.mark.skipif(
  not (REAL_DATA / "cifar10" / "cifar10_test_jpg.tar.gz").is_file(),
  reason="real CIFAR-10 archive not available",
)
def test_bundled_subset_is_the_first_images_of_each_class(tmp_path):
  def members(path):
    with tarfile.open(path) as tar:
      return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}

  full = members(REAL_DATA / "cifar10" / "cifar10_test_jpg.tar.gz")
  subset = members(bundled.cifar_archive("test"))
  expected = {n for n in full if int(n.split("/")[2][:4]) < 100}
  assert set(subset) == expected and len(subset) == 1000
  assert all(subset[n] == full[n] for n in subset)  # the JPEG bytes


@pytest.mark.parametrize(
  "kw,bad",
  [
    ({"name": "cifar1000"}, "name='cifar1000'"),
    ({"split": "val"}, "split='val'"),
    ({"source": "web"}, "source='web'"),
    ({"name": "cifar100", "source": "files"}, "name='cifar100'"),
  ],
)
def test_bad_arguments(tmp_path, kw, bad):
  with pytest.raises(ValueError, match=bad):
    cifar.load_cifar(**{"data_dir": tmp_path, **kw})


# ---------------------------------------------------------------- tfds


class _FakeSource:
  def __init__(self, n):
    names = [f"class{i:02d}" for i in range(3)]
    label = types.SimpleNamespace(names=names)
    self.dataset_info = types.SimpleNamespace(features={"label": label})
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {"image": np.full((32, 32, 3), i, np.uint8), "label": i % 3}


def _fake_tfds(monkeypatch, data_source):
  fake = types.ModuleType("tensorflow_datasets")
  fake.data_source = data_source
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)


def test_tfds_records_are_converted(monkeypatch):
  calls = []

  def data_source(name, **kw):
    calls.append((name, kw))
    return _FakeSource(4)

  _fake_tfds(monkeypatch, data_source)
  data = cifar.load_cifar("cifar100", "test")  # auto: cifar100 is tfds-only
  assert calls == [
    ("cifar100", {"split": "test", "data_dir": None, "download": False})
  ]
  assert data.class_names == ("class00", "class01", "class02")
  np.testing.assert_array_equal(data.labels, [0, 1, 2, 0])
  np.testing.assert_array_equal(data.images[:, 0, 0, 0], [0, 1, 2, 3])


def test_tfds_unprepared_says_how_to_download(monkeypatch, tmp_path):
  def data_source(name, **kw):
    raise FileNotFoundError(f"{name} not prepared")

  _fake_tfds(monkeypatch, data_source)
  with pytest.raises(cifar.TfdsUnavailableError, match="download=True"):
    cifar.load_cifar("cifar10", "train", source="tfds", data_dir=tmp_path)


def test_tfds_not_installed(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(cifar.TfdsUnavailableError, match="not importable"):
    cifar.load_cifar("cifar100", "train", source="tfds")


# ---------------------------------------------------------------- splits


def _split(counts=(30, 20, 10)) -> cifar.ImageSplit:
  labels = np.repeat(np.arange(len(counts)), counts).astype(np.int32)
  images = np.arange(len(labels), dtype=np.uint8).reshape(-1, 1, 1, 1)
  images = np.broadcast_to(images, (len(labels), 2, 2, 3)).copy()
  return cifar.ImageSplit(
    images, labels, tuple(f"c{i}" for i in range(len(counts)))
  )


def test_image_split_take_and_checks():
  data = _split()
  part = data.take([5, 0, 59])
  assert len(part) == 3 and part.class_names == data.class_names
  np.testing.assert_array_equal(part.images[:, 0, 0, 0], [5, 0, 59])
  assert len(data.take(slice(10, 20))) == 10
  assert len(data.take(data.labels == 2)) == 10 and len(data.take([])) == 0
  with pytest.raises(ValueError, match="labels must lie in"):
    cifar.ImageSplit(data.images, data.labels, ("only",))
  # Under the test suite's jaxtyping hook the annotation check fires first.
  with pytest.raises((ValueError, jaxtyping.TypeCheckError)):
    cifar.ImageSplit(data.images, data.labels[:3], data.class_names)


def test_train_val_split_is_stratified_and_seeded():
  data = _split()
  train, val = cifar.train_val_split(data, 12, seed=3)
  assert len(train) == 48 and len(val) == 12
  np.testing.assert_array_equal(np.bincount(val.labels), [6, 4, 2])
  ids = np.concatenate([train.images[:, 0, 0, 0], val.images[:, 0, 0, 0]])
  np.testing.assert_array_equal(np.sort(ids), np.arange(60))
  assert np.all(np.diff(val.images[:, 0, 0, 0].astype(int)) > 0)  # in order
  again = cifar.train_val_split(data, 12, seed=3)[1]
  np.testing.assert_array_equal(again.images, val.images)
  other = cifar.train_val_split(data, 12, seed=4)[1]
  assert not np.array_equal(other.images, val.images)


def test_train_val_split_rounds_to_exact_total():
  data = _split((7, 7, 7))
  for num_val in (1, 2, 10, 20):
    _, val = cifar.train_val_split(data, num_val)
    assert len(val) == num_val
    assert np.ptp(np.bincount(val.labels, minlength=3)) <= 1


@pytest.mark.parametrize("num_val", [0, 60, -1])
def test_train_val_split_bad_size(num_val):
  with pytest.raises(ValueError, match=f"num_val={num_val}"):
    cifar.train_val_split(_split(), num_val)


def test_take_drops_subset_of():
  data = dataclasses.replace(_split(), subset_of=600)
  assert data.take([0, 1]).subset_of is None


def test_train_val_split_of_a_bundled_subset_scales_and_says_so(capsys):
  data = dataclasses.replace(_split(), subset_of=600)  # a 10% subset
  train, val = cifar.train_val_split(data, 59)
  assert len(val) == 59 and capsys.readouterr().err == ""  # fits: as asked
  train, val = cifar.train_val_split(data, 60)
  assert len(train) == 54 and len(val) == 6
  err = capsys.readouterr().err
  assert "num_val=60" in err and "holding out 6" in err
  with pytest.raises(ValueError, match="num_val=600"):
    cifar.train_val_split(data, 600)


# ---------------------------------------------------------------- real data


@slow
@pytest.mark.skipif(
  not (REAL_DATA / "cifar10" / "cifar10_test_jpg.tar.gz").is_file(),
  reason="real CIFAR-10 archive not available",
)
def test_real_cifar10_test_split(tmp_path):
  data = cifar.load_cifar(
    "cifar10", "test", data_dir=REAL_DATA, cache_dir=tmp_path, source="files"
  )
  assert data.images.shape == (10000, 32, 32, 3)
  assert data.images.dtype == np.uint8
  assert data.class_names[:2] == ("airplane", "automobile")
  np.testing.assert_array_equal(np.bincount(data.labels), [1000] * 10)
