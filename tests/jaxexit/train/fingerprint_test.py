"""Tests of run fingerprints (hashes, JSON form, differences)."""

import dataclasses
import pathlib

import numpy as np
import pytest

from jaxexit.train import fingerprint as fp_lib


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Cfg:
  width: int = 16
  dims: tuple[int, ...] = (1, 2)
  lr: float = 1e-3


def test_fingerprint_array_is_short_stable_and_content_sensitive():
  ids = np.arange(10, dtype=np.int32)
  h = fp_lib.fingerprint_array(ids)
  assert len(h) == 16 and int(h, 16) >= 0
  assert fp_lib.fingerprint_array(ids.copy()) == h
  assert fp_lib.fingerprint_array(ids[::-1]) != h  # order
  assert fp_lib.fingerprint_array(ids.astype(np.int64)) != h  # dtype
  assert fp_lib.fingerprint_array(ids.reshape(2, 5)) != h  # shape
  names = np.asarray(["a-1", "b-2"])
  assert fp_lib.fingerprint_array(names) == fp_lib.fingerprint_array(
    ["a-1", "b-2"]
  )
  assert fp_lib.fingerprint_array(names) != fp_lib.fingerprint_array(
    ["a-1", "b-3"]
  )


def test_fingerprint_file(tmp_path):
  path = tmp_path / "train.tsv"
  path.write_text("a\tb\n")
  h = fp_lib.fingerprint_file(path)
  path.write_text("a\tc\n")
  assert len(h) == 16 and fp_lib.fingerprint_file(path) != h


def test_to_jsonable_dataclass_tuple_array_path():
  out = fp_lib.to_jsonable(
    {
      "model": _Cfg(),
      "ids": np.arange(3),
      "n": np.int64(4),
      "dir": pathlib.Path("/x"),
    }
  )
  assert out == {
    "model": {"width": 16, "dims": [1, 2], "lr": 1e-3},
    "ids": fp_lib.fingerprint_array(np.arange(3)),
    "n": 4,
    "dir": "/x",
  }


def test_to_jsonable_refuses_unstable_values_naming_the_path():
  with pytest.raises(TypeError, match=r"fingerprint\.optim\.schedule"):
    fp_lib.to_jsonable({"optim": {"schedule": lambda s: s}})


def test_differences_name_nested_fields_old_and_new():
  old = {"model": _Cfg(), "task": "rte", "seed": 0, "gone": 1}
  new = {"model": _Cfg(lr=2e-3), "task": "rte", "seed": 0, "added": [1]}
  assert fp_lib.differences(old, new) == [
    ("added", fp_lib.ABSENT, [1]),
    ("gone", 1, fp_lib.ABSENT),
    ("model.lr", 1e-3, 2e-3),
  ]
  assert fp_lib.differences(old, old) == []
  # A stored tuple comes back as a list; NaN equals NaN.
  assert (
    fp_lib.differences(
      {"a": [1, 2], "b": float("nan")}, {"a": (1, 2), "b": float("nan")}
    )
    == []
  )


def test_mismatch_error_lists_fields_and_both_ways_out():
  err = fp_lib.mismatch_error(
    20, "/w/checkpoints", [("num_steps", 20, 10), ("lr", 1e-3, 2e-3)]
  )
  assert isinstance(err, ValueError)
  text = str(err)
  for part in (
    "step 20 in /w/checkpoints",
    "num_steps: 20 (checkpoint) != 10 (this run)",
    "lr: 0.001",
    "fresh output folder",
    "force_resume=True",
    "--force-resume",
  ):
    assert part in text, part
