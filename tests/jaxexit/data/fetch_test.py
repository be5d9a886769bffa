"""Tests for jaxexit.data.fetch: checked, atomic downloads from file:// URLs."""

import hashlib
import urllib.request

import pytest

from jaxexit.data import fetch

PAYLOAD = bytes(range(256)) * 700  # 179,200 bytes: several progress updates


@pytest.fixture
def online(monkeypatch):
  monkeypatch.delenv(fetch.OFFLINE_ENV_VAR)


@pytest.fixture
def source(tmp_path):
  path = tmp_path / "src" / "data.zip"
  path.parent.mkdir()
  path.write_bytes(PAYLOAD)
  return path


def _leftovers(folder):
  return sorted(p.name for p in folder.iterdir())


def test_download_checks_and_renames(online, source, tmp_path, capsys):
  dest = tmp_path / "data.zip"
  digest = fetch.download(
    source.as_uri(),
    dest,
    size=len(PAYLOAD),
    sha256=hashlib.sha256(PAYLOAD).hexdigest(),
  )
  assert digest == hashlib.sha256(PAYLOAD).hexdigest()
  assert dest.read_bytes() == PAYLOAD
  assert _leftovers(tmp_path) == ["data.zip", "src"]
  bar = capsys.readouterr().err
  assert "data.zip" in bar and "100%" in bar


def test_unknown_checksum_and_size_are_not_checked(online, source, tmp_path):
  dest = tmp_path / "data.zip"
  fetch.download(source.as_uri(), dest, sha256=None, size=None, progress=False)
  assert dest.read_bytes() == PAYLOAD


def test_checksum_mismatch_names_file_and_both_hashes(online, source, tmp_path):
  dest, wrong = tmp_path / "data.zip", "ab" * 32
  with pytest.raises(fetch.ChecksumError) as err:
    fetch.download(
      source.as_uri(), dest, sha256=wrong, size=len(PAYLOAD), progress=False
    )
  msg = str(err.value)
  assert "data.zip" in msg and wrong in msg
  assert hashlib.sha256(PAYLOAD).hexdigest() in msg
  assert _leftovers(tmp_path) == ["src"]


def test_short_download_is_not_kept(online, source, tmp_path):
  with pytest.raises(fetch.FetchError, match=f"expected {len(PAYLOAD) + 1}"):
    fetch.download(
      source.as_uri(),
      tmp_path / "data.zip",
      sha256=None,
      size=len(PAYLOAD) + 1,
      progress=False,
    )
  assert _leftovers(tmp_path) == ["src"]


class _Dropping:
  """A response that fails after its first chunk."""

  def __init__(self, error):
    self.headers, self.error, self.sent = {}, error, False

  def read(self, n):
    if self.sent:
      raise self.error
    self.sent = True
    return PAYLOAD[:n]

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


@pytest.mark.parametrize(
  "error,raised",
  [
    (ConnectionResetError("reset by peer"), fetch.FetchError),
    (KeyboardInterrupt(), KeyboardInterrupt),
  ],
)
def test_interrupted_download_leaves_no_file(
  online, tmp_path, monkeypatch, error, raised
):
  monkeypatch.setattr(fetch, "_CHUNK", 1000)
  monkeypatch.setattr(
    urllib.request, "urlopen", lambda url, timeout: _Dropping(error)
  )
  with pytest.raises(raised):
    fetch.download(
      "file:///x/data.zip",
      tmp_path / "data.zip",
      sha256=None,
      size=len(PAYLOAD),
      progress=False,
    )
  assert _leftovers(tmp_path) == []


def test_unreachable_url_is_named(online, tmp_path):
  url = (tmp_path / "missing.zip").as_uri()
  with pytest.raises(fetch.FetchError, match="missing.zip"):
    fetch.download(url, tmp_path / "data.zip", sha256=None, size=None)
  assert _leftovers(tmp_path) == []


def test_offline_never_opens_the_url(source, tmp_path, monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("urlopen called while offline")

  monkeypatch.setattr(urllib.request, "urlopen", refuse)
  with pytest.raises(fetch.FetchError, match=fetch.OFFLINE_ENV_VAR):
    fetch.download(
      source.as_uri(), tmp_path / "data.zip", sha256=None, size=None
    )


@pytest.mark.parametrize(
  "value,expected",
  [
    ("1", True),
    ("true", True),
    ("YES", True),
    ("0", False),
    ("", False),
    ("no", False),
  ],
)
def test_offline_values(monkeypatch, value, expected):
  monkeypatch.setenv(fetch.OFFLINE_ENV_VAR, value)
  assert fetch.offline() is expected
