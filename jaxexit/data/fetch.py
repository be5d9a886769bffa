"""Downloading one file: progress bar, size and sha256 check, atomic rename.

`download` streams a URL into a temporary file beside the destination,
hashing as it goes, checks the size and the sha256, and only then renames
the file into place; a killed or failed download leaves at most a
`.<name>.*.part` file, which no loader reads.

Nothing downloads while the environment variable `JAXEXIT_OFFLINE` is set
to 1 (or true/yes): `offline()` is the one switch every fetch checks.
"""

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

OFFLINE_ENV_VAR = "JAXEXIT_OFFLINE"
# urlopen's timeout bounds the connection and every read, so an unreachable
# host fails in seconds instead of the system's minutes.
TIMEOUT_S = 10.0
_CHUNK = 1 << 20


class FetchError(OSError):
  """A download failed: unreachable, interrupted, or the wrong size."""


class ChecksumError(FetchError):
  """A downloaded file's sha256 is not the expected one."""


def offline() -> bool:
  """Whether `$JAXEXIT_OFFLINE` forbids downloads (read at call time)."""
  value = os.environ.get(OFFLINE_ENV_VAR, "").strip().lower()
  return value in ("1", "true", "yes", "on")


def _stream(response, out, total: int | None, desc: str, progress: bool) -> str:
  """Copies `response` to `out`; returns the sha256 hex digest."""
  digest = hashlib.sha256()
  with tqdm(
    total=total,
    unit="B",
    unit_scale=True,
    unit_divisor=1024,
    desc=desc,
    disable=not progress,
  ) as bar:
    while chunk := response.read(_CHUNK):
      digest.update(chunk)
      out.write(chunk)
      bar.update(len(chunk))
  return digest.hexdigest()


def download(
  url: str,
  dest: str | os.PathLike,
  *,
  sha256: str | None,
  size: int | None,
  progress: bool = True,
  timeout: float = TIMEOUT_S,
) -> str:
  """Downloads `url` to `dest` after checking its size and sha256.

  Args:
    url: http(s) or file URL.
    dest: final path; its folder must exist. Written only when every check
      passes (temporary file in the same folder, then `os.replace`).
    sha256: expected hex digest, or None when unknown (not checked).
    size: expected byte count, or None when unknown (not checked).
    progress: show a tqdm bar on stderr.
    timeout: seconds allowed for connecting and for each read.

  Returns:
    The sha256 hex digest of the downloaded bytes.

  Raises:
    FetchError: offline, unreachable, interrupted, or not `size` bytes; the
      message names the URL and the reason.
    ChecksumError: the sha256 differs; the message names the URL, `dest` and
      both digests.
  """
  if offline():
    raise FetchError(f"not downloading {url}: ${OFFLINE_ENV_VAR} is set")
  dest = Path(dest)
  fd, tmp = tempfile.mkstemp(
    dir=dest.parent, prefix=f".{dest.name}.", suffix=".part"
  )
  try:
    with os.fdopen(fd, "wb") as out:
      try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
          length = response.headers.get("Content-Length")
          total = size or (int(length) if length else None)
          actual = _stream(response, out, total, dest.name, progress)
      except (urllib.error.URLError, OSError, ValueError) as e:
        raise FetchError(f"{url}: {type(e).__name__}: {e}") from e
      got = out.tell()
    if size is not None and got != size:
      raise FetchError(
        f"{url}: got {got} bytes; expected {size} "
        f"(interrupted or changed upstream)"
      )
    if sha256 is not None and actual != sha256.lower():
      raise ChecksumError(
        f"{url} -> {dest}: sha256 mismatch: got {actual}, expected "
        f"{sha256.lower()}; the file was not kept"
      )
    os.chmod(tmp, 0o644)  # mkstemp creates 0o600
    os.replace(tmp, dest)
    return actual
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
