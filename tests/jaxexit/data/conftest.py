"""Data tests never reach the network.

Every test here runs with `$JAXEXIT_OFFLINE=1`. A test that exercises a
fetch unsets it and serves the archive from a `file://` URL. `urlopen`
itself refuses any other scheme, so a fetch that escapes the fake URLs fails
the test and does not download.
"""

import urllib.request

import pytest

from jaxexit.data import fetch

_urlopen = urllib.request.urlopen


def _local_only(url, *args, **kwargs):
  target = url if isinstance(url, str) else url.full_url
  if not target.startswith("file:"):
    raise AssertionError(f"a test tried to reach the network: {target}")
  return _urlopen(url, *args, **kwargs)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
  monkeypatch.setenv(fetch.OFFLINE_ENV_VAR, "1")
  monkeypatch.setattr(urllib.request, "urlopen", _local_only)
