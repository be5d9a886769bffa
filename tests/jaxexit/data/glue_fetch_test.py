"""Tests for jaxexit.data.glue_fetch, with zips served from file:// URLs."""

import hashlib
import json
import re
import zipfile
from pathlib import Path

import pytest

from jaxexit.data import fetch, glue_fetch, location

RTE_FILES = {
  "train.tsv": "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n",
  "dev.tsv": "index\tsentence1\tsentence2\tlabel\n0\tc\td\tnot_entailment\n",
  "test.tsv": "index\tsentence1\tsentence2\n0\te\tf\n",
}


def make_zip(
  path: Path, top: str = "RTE", files=None, stored: bool = False
) -> Path:
  """An archive shaped like GLUE's: one top folder, plus macOS debris."""
  path.parent.mkdir(parents=True, exist_ok=True)
  method = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
  with zipfile.ZipFile(path, "w", method) as z:
    z.writestr(f"{top}/", "")
    for name, text in (RTE_FILES if files is None else files).items():
      z.writestr(f"{top}/{name}", text)
      z.writestr(f"__MACOSX/{top}/._{name}", "junk")
  return path


def serve(
  monkeypatch, task: str, *paths: Path, sha256="auto", size="auto"
) -> glue_fetch.GlueZip:
  """Points `GLUE_ZIPS[task]` at local files (the last one's bytes)."""
  data = paths[-1].read_bytes()
  entry = glue_fetch.GlueZip(
    urls=tuple(p.as_uri() for p in paths),
    size=len(data) if size == "auto" else size,
    sha256=hashlib.sha256(data).hexdigest() if sha256 == "auto" else sha256,
  )
  monkeypatch.setitem(glue_fetch.GLUE_ZIPS, task, entry)
  return entry


@pytest.fixture
def online(monkeypatch):
  monkeypatch.delenv(fetch.OFFLINE_ENV_VAR)


def test_table_matches_location_and_is_well_formed():
  glue_keys = [
    k for k, s in location.DATASETS.items() if s.subdir.startswith("glue/")
  ]
  assert sorted(glue_fetch.GLUE_ZIPS) == sorted(set(glue_keys) - {"mrpc"})
  for key, entry in glue_fetch.GLUE_ZIPS.items():
    assert entry.urls[0] == location.DATASETS[key].source_url, key
    assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256), key
    assert entry.size > 0
  assert glue_fetch.GLUE_ZIPS["sst2"].size == 7439277


def test_fetch_writes_the_layout_and_a_record(
  online, monkeypatch, tmp_path, capsys
):
  entry = serve(monkeypatch, "rte", make_zip(tmp_path / "src" / "RTE.zip"))
  folder = glue_fetch.fetch_glue("rte", data_dir=tmp_path / "data")
  assert folder == tmp_path / "data" / "glue" / "RTE"
  assert sorted(p.name for p in folder.iterdir()) == [
    glue_fetch.RECORD,
    "dev.tsv",
    "train.tsv",
  ]  # no zip, no temp files
  for name in ("train.tsv", "dev.tsv"):
    assert (folder / name).read_text() == RTE_FILES[name]
  record = json.loads((folder / glue_fetch.RECORD).read_text())
  assert record["url"] == entry.urls[0] and record["sha256_checked"]
  assert record["sha256"] == entry.sha256
  assert (
    record["files_sha256"]["dev.tsv"]
    == hashlib.sha256(RTE_FILES["dev.tsv"].encode()).hexdigest()
  )
  assert "RTE.zip" in capsys.readouterr().err  # the progress bar


def test_top_folder_may_differ_from_the_task_folder(
  online, monkeypatch, tmp_path
):
  files = {"train.tsv": "x\n", "dev.tsv": "y\n"}
  serve(monkeypatch, "qnli", make_zip(tmp_path / "QNLIv2.zip", "QNLI", files))
  folder = glue_fetch.fetch_glue(
    "qnli", data_dir=tmp_path / "d", progress=False
  )
  assert (folder / "dev.tsv").read_text() == "y\n"


def test_checksum_mismatch_keeps_nothing(online, monkeypatch, tmp_path):
  src = make_zip(tmp_path / "src" / "RTE.zip")
  wrong = "0" * 64
  serve(monkeypatch, "rte", src, sha256=wrong)
  with pytest.raises(fetch.ChecksumError) as err:
    glue_fetch.fetch_glue("rte", data_dir=tmp_path / "data", progress=False)
  msg = str(err.value)
  assert "RTE.zip" in msg and wrong in msg
  assert hashlib.sha256(src.read_bytes()).hexdigest() in msg
  assert list((tmp_path / "data" / "glue" / "RTE").iterdir()) == []


def test_unknown_checksum_checks_size_and_member_crc(
  online, monkeypatch, tmp_path
):
  serve(monkeypatch, "rte", make_zip(tmp_path / "RTE.zip"), sha256=None)
  folder = glue_fetch.fetch_glue("rte", data_dir=tmp_path / "d", progress=False)
  record = json.loads((folder / glue_fetch.RECORD).read_text())
  assert not record["sha256_checked"]
  assert "checksum unknown" in record["note"]


def test_corrupt_member_fails_its_crc(online, monkeypatch, tmp_path):
  src = make_zip(tmp_path / "RTE.zip", stored=True)
  raw = src.read_bytes()
  at = raw.index(b"not_entailment")  # inside dev.tsv, stored uncompressed
  src.write_bytes(raw[:at] + b"N" + raw[at + 1 :])
  serve(monkeypatch, "rte", src, sha256=None)
  with pytest.raises(fetch.FetchError, match="corrupt archive"):
    glue_fetch.fetch_glue("rte", data_dir=tmp_path / "d", progress=False)
  assert not (tmp_path / "d" / "glue" / "RTE" / "dev.tsv").exists()


def test_missing_member_writes_nothing(online, monkeypatch, tmp_path):
  serve(
    monkeypatch,
    "rte",
    make_zip(tmp_path / "RTE.zip", files={"train.tsv": "x\n"}),
  )
  with pytest.raises(fetch.FetchError, match="dev.tsv"):
    glue_fetch.fetch_glue("rte", data_dir=tmp_path / "d", progress=False)
  assert list((tmp_path / "d" / "glue" / "RTE").iterdir()) == []


def test_falls_through_to_the_next_url(online, monkeypatch, tmp_path):
  good = make_zip(tmp_path / "mirror" / "RTE.zip")
  serve(monkeypatch, "rte", tmp_path / "gone" / "RTE.zip", good)
  folder = glue_fetch.fetch_glue("rte", data_dir=tmp_path / "d", progress=False)
  record = json.loads((folder / glue_fetch.RECORD).read_text())
  assert record["url"] == good.as_uri()


def test_every_url_failing_lists_each_reason(online, monkeypatch, tmp_path):
  bad = make_zip(tmp_path / "bad" / "RTE.zip")
  serve(monkeypatch, "rte", tmp_path / "gone" / "RTE.zip", bad, sha256="1" * 64)
  with pytest.raises(fetch.ChecksumError, match="every source failed") as e:
    glue_fetch.fetch_glue("rte", data_dir=tmp_path / "d", progress=False)
  assert "gone" in str(e.value) and "1" * 64 in str(e.value)


def test_offline_and_mrpc_are_refused(monkeypatch, tmp_path):
  with pytest.raises(fetch.FetchError, match=fetch.OFFLINE_ENV_VAR):
    glue_fetch.fetch_glue("rte", data_dir=tmp_path)
  monkeypatch.delenv(fetch.OFFLINE_ENV_VAR)
  with pytest.raises(fetch.FetchError, match="no GLUE archive"):
    glue_fetch.fetch_glue("mrpc", data_dir=tmp_path)
  assert not (tmp_path / "glue").exists()
