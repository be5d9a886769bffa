"""Tests for jaxexit.data.glue_sources: data dir, bundled copy, fetch, error.

Each test starts offline (conftest); fetch tests unset `$JAXEXIT_OFFLINE`
and serve a zip built here from a file:// URL.
"""

import os
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from jaxexit.data import bundled, fetch, glue, glue_sources, location
from tests.jaxexit.data.glue_fetch_test import RTE_FILES, make_zip, serve
from tests.tiers import fast_only

SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
REAL_DATA = Path(os.environ.get(location.ENV_VAR) or SHARED_DATA)


def _no_network(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("urlopen called")

  monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_data_dir_wins_over_the_bundled_copy(tmp_path, capsys):
  path = tmp_path / "glue" / "SST-2" / "dev.tsv"
  path.parent.mkdir(parents=True)
  path.write_text("sentence\tlabel\ngood .\t1\n")
  assert glue_sources.glue_split_file("sst2", "dev", data_dir=tmp_path) == path
  assert glue.load_glue("sst2", "dev", data_dir=tmp_path).texts_a == ["good ."]
  assert capsys.readouterr().err == ""


@pytest.mark.parametrize("split,rows", [("train", 67349), ("dev", 872)])
def test_bundled_copy_when_the_data_dir_lacks_it(
  tmp_path, monkeypatch, capsys, split, rows
):
  _no_network(monkeypatch)
  monkeypatch.setenv(location.ENV_VAR, str(tmp_path))  # an empty data dir
  data = glue.load_glue("sst2", split)
  assert len(data) == rows and data.texts_b is None
  err = capsys.readouterr().err
  assert err.count("\n") == 1
  assert f"sst2 {split}: not in {tmp_path / 'glue' / 'SST-2'}" in err
  assert "bundled with jaxexit" in err and bundled.SOURCES in err


@pytest.mark.skipif(
  not (REAL_DATA / "glue" / "SST-2" / "dev.tsv").is_file(),
  reason="real SST-2 not available",
)
@pytest.mark.parametrize("split", fast_only(["train", "dev"], "dev"))
def test_bundled_copy_equals_the_data_dir(tmp_path, split):
  real = glue.load_glue("sst2", split, data_dir=REAL_DATA)
  copy = glue.load_glue("sst2", split, data_dir=tmp_path)
  assert copy.texts_a == real.texts_a and copy.texts_b is None
  np.testing.assert_array_equal(copy.labels, real.labels)
  assert copy.labels.dtype == real.labels.dtype


def test_offline_error_says_why_nothing_was_fetched(tmp_path, monkeypatch):
  _no_network(monkeypatch)
  with pytest.raises(location.DataNotFoundError) as err:
    glue.load_glue("rte", "dev", data_dir=tmp_path)
  msg = str(err.value)
  assert "Paths tried" in msg and "RTE.zip" in msg  # the original message
  assert "No copy of 'rte' is bundled" in msg
  assert f"${fetch.OFFLINE_ENV_VAR} is set" in msg


def test_online_fetches_into_the_data_dir_once(tmp_path, monkeypatch, capsys):
  monkeypatch.delenv(fetch.OFFLINE_ENV_VAR)
  serve(monkeypatch, "rte", make_zip(tmp_path / "src" / "RTE.zip"))
  data_dir = tmp_path / "data"
  dev = glue.load_glue("rte", "dev", data_dir=data_dir)
  assert dev.texts_a == ["c"] and dev.labels.tolist() == [1]
  assert "RTE.zip" in capsys.readouterr().err  # progress bar
  _no_network(monkeypatch)  # now the data dir has it
  train = glue.load_glue("rte", "train", data_dir=data_dir)
  assert train.texts_b == ["b"]
  assert (data_dir / "glue" / "RTE" / "train.tsv").read_text() == (
    RTE_FILES["train.tsv"]
  )


def test_fetch_failure_reason_is_in_the_error(tmp_path, monkeypatch):
  monkeypatch.delenv(fetch.OFFLINE_ENV_VAR)
  src = make_zip(tmp_path / "src" / "RTE.zip")
  serve(monkeypatch, "rte", src, sha256="f" * 64)
  with pytest.raises(location.DataNotFoundError) as err:
    glue.load_glue("rte", "train", data_dir=tmp_path / "data")
  msg = str(err.value)
  assert "ChecksumError" in msg and "RTE.zip" in msg and "f" * 64 in msg
  assert fetch.OFFLINE_ENV_VAR in msg
  assert not (tmp_path / "data" / "glue" / "RTE" / "train.tsv").exists()


def test_interrupted_fetch_leaves_no_split_file(tmp_path, monkeypatch):
  monkeypatch.delenv(fetch.OFFLINE_ENV_VAR)
  serve(monkeypatch, "rte", make_zip(tmp_path / "src" / "RTE.zip"))

  def killed(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(fetch, "_stream", killed)
  with pytest.raises(KeyboardInterrupt):
    glue.load_glue("rte", "dev", data_dir=tmp_path / "data")
  assert list((tmp_path / "data" / "glue" / "RTE").iterdir()) == []
  with pytest.raises(location.DataNotFoundError):
    location.require_file("rte", "dev", data_dir=tmp_path / "data")


def test_mrpc_is_never_fetched(tmp_path, monkeypatch):
  monkeypatch.delenv(fetch.OFFLINE_ENV_VAR)
  _no_network(monkeypatch)
  with pytest.raises(location.DataNotFoundError, match="GLUE has no zip"):
    glue.load_glue("mrpc", "dev", data_dir=tmp_path)
