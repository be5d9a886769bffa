"""Tests of the shared results writer: merge by key, atomic, locked.

Issue 21 defect 2 (a second invocation into one --out replaced the first's
results) and Deliver item 3.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from jaxexit import results_store as rs

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))


def _rec(method, seed=0, task="rte", score=0.5):
  return {"task": task, "method": method, "seed": seed, "score": score}


def test_two_methods_into_one_file_keep_both(tmp_path):
  path = tmp_path / "results.json"
  rs.merge_records(path, [_rec("pabee")])
  merged = rs.merge_records(path, [_rec("static")])
  stored = json.loads(path.read_text())
  assert stored == merged == [_rec("pabee"), _rec("static")]


def test_same_key_is_replaced_in_place_others_kept_in_order(tmp_path):
  path = tmp_path / "results.json"
  rs.merge_records(path, [_rec("a"), _rec("b"), _rec("c"), _rec("a", seed=1)])
  rs.merge_records(path, [_rec("d"), _rec("b", score=0.9)])
  assert json.loads(path.read_text()) == [
    _rec("a"),
    _rec("b", score=0.9),
    _rec("c"),
    _rec("a", seed=1),
    _rec("d"),
  ]


def test_missing_key_fields_count_as_none(tmp_path):
  path = tmp_path / "results.json"
  rs.merge_records(path, [{"method": "x", "v": 1}, _rec("x")])
  rs.merge_records(path, [{"method": "x", "task": None, "v": 2}])
  assert json.loads(path.read_text()) == [
    {"method": "x", "task": None, "v": 2},
    _rec("x"),
  ]


def test_custom_key_and_duplicate_new_keys(tmp_path):
  path = tmp_path / "results.json"
  key = ("method", "budget_or_threshold")
  rs.merge_records(
    path,
    [
      {"method": "m", "budget_or_threshold": 0.5},
      {"method": "m", "budget_or_threshold": 0.7},
    ],
    key,
  )
  assert len(json.loads(path.read_text())) == 2
  with pytest.raises(ValueError, match="two records share the key"):
    rs.merge_records(path, [_rec("a"), _rec("a", score=1.0)])


def test_extra_fields_merge_per_method(tmp_path):
  path = tmp_path / "results.json"
  rs.merge_records(
    path,
    [_rec("grpo")],
    extra={"training": {"grpo": [1]}, "config": {"iterations": 2}},
  )
  rs.merge_records(
    path,
    [_rec("exit")],
    extra={"training": {"exit": [2]}, "config": {"iterations": 3}},
  )
  assert json.loads(path.read_text()) == {
    "records": [_rec("grpo"), _rec("exit")],
    "training": {"grpo": [1], "exit": [2]},
    "config": {"iterations": 3},
  }


def test_unreadable_existing_file_is_left_alone(tmp_path):
  path = tmp_path / "results.json"
  path.write_text("{not json")
  with pytest.raises(ValueError, match="not valid JSON"):
    rs.merge_records(path, [_rec("a")])
  assert path.read_text() == "{not json"
  path.write_text('{"a": 1}')
  with pytest.raises(ValueError, match="no list of records"):
    rs.merge_records(path, [_rec("a")])


def test_crash_between_write_and_rename_keeps_the_old_file(
  tmp_path, monkeypatch
):
  path = tmp_path / "results.json"
  rs.merge_records(path, [_rec("pabee")])
  before = path.read_bytes()

  def crash(src, dst):
    raise OSError("simulated crash before the rename")

  monkeypatch.setattr(rs.os, "replace", crash)
  with pytest.raises(OSError, match="simulated crash"):
    rs.merge_records(path, [_rec("static")])
  monkeypatch.undo()
  assert path.read_bytes() == before
  assert sorted(p.name for p in tmp_path.iterdir()) == [
    "results.json",
    "results.json.lock",
  ]  # no temporary file left


def test_concurrent_writer_is_refused_naming_lock_and_pid(tmp_path):
  path = tmp_path / "results.json"
  rs.merge_records(path, [_rec("pabee")])
  # A second process holds the results file's lock while we write.
  holder = textwrap.dedent(f"""
      import sys, time
      sys.path.insert(0, {REPO!r})
      from jaxexit import results_store as rs
      with rs._flock(rs.pathlib.Path({str(path) + ".lock"!r}), "x"):
        print("held", flush=True)
        sys.stdin.readline()
  """)
  proc = subprocess.Popen(
    [sys.executable, "-c", holder],
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(rs.OutputLocked) as e:
      rs.merge_records(path, [_rec("static")])
    assert f"{path}.lock" in str(e.value)
    assert f"pid {proc.pid}" in str(e.value)
  finally:
    proc.communicate("\n", timeout=30)
  assert json.loads(path.read_text()) == [_rec("pabee")]
  rs.merge_records(path, [_rec("static")])  # free again
  assert len(json.loads(path.read_text())) == 2


def test_lock_output_dir_refuses_a_second_run(tmp_path):
  out = tmp_path / "runs" / "z"
  with rs.lock_output_dir(out) as held:
    assert held == out and out.is_dir()
    with pytest.raises(rs.OutputLocked) as e:
      with rs.lock_output_dir(out):
        pass
    text = str(e.value)
    assert str(out / rs.DIR_LOCK) in text and f"pid {os.getpid()}" in text
    assert "another --out" in text
    # Results can still be merged inside the held folder.
    rs.merge_records(out / "results.json", [_rec("a")])
  with rs.lock_output_dir(out):  # released on exit
    pass


def test_written_file_has_ordinary_permissions(tmp_path):
  """Not mkstemp's 0600: results are read by other users and tools."""
  old = os.umask(0o022)
  try:
    rs.write_json_atomic(tmp_path / "r.json", {"a": 1})
  finally:
    os.umask(old)
  assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644
