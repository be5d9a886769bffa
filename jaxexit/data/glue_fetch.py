"""Fetching GLUE tasks from the official zips into the data dir's layout.

`GLUE_ZIPS` lists, per task, the archive of GLUE's `download_glue_data.py`
(`https://dl.fbaipublicfiles.com/glue/data/<name>.zip`, the URL
`jaxexit.data.location` names), its size and sha256, and mirrors with the
same bytes. The sizes and digests are those recorded for these URLs in
huggingface/datasets `datasets/glue/dataset_infos.json` (commit 040102f1);
tensorflow/datasets `tensorflow_datasets/url_checksums/glue.txt` (commit
333639b3) lists the same size and digest for the Firebase mirrors of every
archive but QQP-clean. MRPC has no GLUE zip (GLUE builds it from
Microsoft's release) and is not fetched.

`fetch_glue` downloads an archive (`jaxexit.data.fetch.download`: progress
bar, size and sha256 checks), reads the split files the loaders need from
it (`zipfile` checks each member's CRC), writes each one to a temporary file
and renames it into `<data dir>/glue/<TASK>/`, so a split file exists only
when complete. It then deletes the archive and writes `FETCHED.json`,
which records the URL, the archive's sha256 (and whether it was checked)
and each file's sha256.
"""

import dataclasses
import datetime
import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

from jaxexit.data import fetch, location

RECORD = "FETCHED.json"
_URL = "https://dl.fbaipublicfiles.com/glue/data/{}.zip"
_FIREBASE = (
  "https://firebasestorage.googleapis.com/v0/b/"
  "mtl-sentence-representations.appspot.com/o/data%2F{}.zip"
  "?alt=media&token={}"
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GlueZip:
  """One official GLUE archive.

  Attributes:
    urls: where to get it, tried in order (the first is the official one).
    size: its size in bytes.
    sha256: its hex digest, or None when no published digest is known (then
      only the size and each member's CRC are checked).
  """

  urls: tuple[str, ...]
  size: int
  sha256: str | None


def _zip(
  name: str, size: int, sha256: str, firebase_token: str | None = None
) -> GlueZip:
  urls = (_URL.format(name),)
  if firebase_token:
    urls += (_FIREBASE.format(name, firebase_token),)
  return GlueZip(urls=urls, size=size, sha256=sha256)


GLUE_ZIPS: dict[str, GlueZip] = {
  "cola": _zip(
    "CoLA",
    376971,
    "f212fcd832b8f7b435fb991f101abf89f96b933ab400603bf198960dfc32cbff",
    "46d5e637-3411-4188-bc44-5809b5bfb5f4",
  ),
  "sst2": _zip(
    "SST-2",
    7439277,
    "d67e16fb55739c1b32cdce9877596db1c127dc322d93c082281f64057c16deaa",
    "aabc5f6b-e466-44a2-b9b4-cf6337f84ac8",
  ),
  "stsb": _zip(
    "STS-B",
    802872,
    "e60a6393de5a8b5b9bac5020a1554b54e3691f9d600b775bd131e613ac179c85",
    "bddb94a7-8706-4e0d-a694-1109e12273b5",
  ),
  "qqp": _zip(
    "QQP-clean",
    41696084,
    "40e7c862c04eb26ee04b67fd900e76c45c6ba8e6d8fab4f8f1f8072a1a3fbae0",
  ),
  "mnli": _zip(
    "MNLI",
    312783507,
    "e7c1d896d26ed6caf700110645df426cc2d8ebf02a5ab743d5a5c68ac1c83633",
    "50329ea1-e339-40e2-809c-10c40afff3ce",
  ),
  "qnli": _zip(
    "QNLIv2",
    10627589,
    "e634e78627a29adaecd4f955359b22bf5e70f2cbd93b493f2d624138a0c0e5f5",
    "6fdcf570-0fc5-4631-8456-9505272d1601",
  ),
  "rte": _zip(
    "RTE",
    697150,
    "6bf86de103ecd335f3441bd43574d23fef87ecc695977a63b82d5efb206556ee",
    "5efa7e85-a0bb-4f19-8ea2-9e1840f077fb",
  ),
  "wnli": _zip(
    "WNLI",
    28999,
    "ae0e8e4d16f4d46d4a0a566ec7ecceccfd3fbfaa4a7a4b4e02848c0f2561ac46",
    "068ad0a0-ded7-4bd7-99a5-5e00222e0faf",
  ),
}


def _member(archive: zipfile.ZipFile, file: str) -> zipfile.ZipInfo:
  """The member `<top folder>/<file>` (GLUE zips hold one top folder)."""
  for info in archive.infolist():
    parts = info.filename.split("/")
    if (
      len(parts) == 2
      and parts[1] == file
      and not parts[0].startswith("__MACOSX")
    ):
      return info
  raise fetch.FetchError(
    f"{archive.filename}: no member '<folder>/{file}' among "
    f"{[i.filename for i in archive.infolist()][:20]}"
  )


def _extract(
  archive_path: Path, files: tuple[str, ...], folder: Path
) -> dict[str, str]:
  """Writes each of `files` into `folder` atomically; returns their sha256."""
  digests = {}
  try:
    with zipfile.ZipFile(archive_path) as archive:
      members = {f: _member(archive, f) for f in files}
      for file, info in members.items():
        data = archive.read(info)  # raises BadZipFile on a CRC mismatch
        fd, tmp = tempfile.mkstemp(
          dir=folder, prefix=f".{file}.", suffix=".part"
        )
        try:
          with os.fdopen(fd, "wb") as out:
            out.write(data)
          os.chmod(tmp, 0o644)
          os.replace(tmp, folder / file)
        finally:
          if os.path.exists(tmp):
            os.remove(tmp)
        digests[file] = hashlib.sha256(data).hexdigest()
  except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
    raise fetch.FetchError(f"{archive_path}: corrupt archive: {e}") from e
  return digests


def _download_any(spec: GlueZip, dest: Path, progress: bool) -> tuple[str, str]:
  """(url, sha256) of the first URL that downloads and checks out."""
  reasons = []
  for url in spec.urls:
    try:
      return url, fetch.download(
        url, dest, sha256=spec.sha256, size=spec.size, progress=progress
      )
    except fetch.FetchError as e:
      reasons.append(e)
  if len(reasons) == 1:
    raise reasons[0]
  raise type(reasons[-1])(
    "every source failed:\n" + "\n".join(f"  {e}" for e in reasons)
  )


def fetch_glue(
  task: str, *, data_dir: str | os.PathLike | None = None, progress: bool = True
) -> Path:
  """Downloads GLUE `task` and unpacks it into `<data dir>/glue/<TASK>/`.

  Args:
    task: a GLUE task name (see `jaxexit.data.location.dataset_spec`).
    data_dir: the data dir (None: `$JAXEXIT_DATA`, then the default).
    progress: show a download progress bar on stderr.

  Returns:
    The task folder, holding every split file of the task and `RECORD`.

  Raises:
    FetchError: offline (`$JAXEXIT_OFFLINE`), no archive for the task
      (MRPC), every URL failed, or the archive lacks a split file.
    ChecksumError: the archive's sha256 is wrong (message: URL, file and
      both digests).
  """
  spec = location.dataset_spec(task)
  archive = GLUE_ZIPS.get(spec.name)
  if archive is None:
    raise fetch.FetchError(
      f"no GLUE archive to fetch for {spec.name!r} ({spec.source_url})"
    )
  if fetch.offline():
    raise fetch.FetchError(f"${fetch.OFFLINE_ENV_VAR} is set")
  folder = location.resolve_data_dir(data_dir) / spec.subdir
  folder.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=folder, prefix=".fetch-") as tmp:
    zip_path = Path(tmp) / Path(archive.urls[0]).name
    url, digest = _download_any(archive, zip_path, progress)
    files = _extract(zip_path, spec.files, folder)
  record = {
    "url": url,
    "size": archive.size,
    "sha256": digest,
    "sha256_checked": archive.sha256 is not None,
    "note": (
      "sha256 checked against the published digest"
      if archive.sha256
      else "checksum unknown: only the size and each member's CRC were checked"
    ),
    "files_sha256": files,
    "fetched": datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec="seconds"
    ),
  }
  (folder / RECORD).write_text(json.dumps(record, indent=2) + "\n")
  return folder
