"""Re-creates the copies in `jaxexit/data/bundled/` from a data dir.

  python -m jaxexit.data.bundle_build --data-dir /path/to/data [--out DIR]

For maintainers: the package ships the result (see `jaxexit.data.bundled`).
It writes

  glue/SST-2/{train,dev}.tsv.xz   the data dir's files, xz preset 9e
  cifar10/cifar10_<split>_jpg.tar.gz
                                  the first `CIFAR_PER_CLASS[split]` members
                                  of each class folder, in archive order
                                  (= name order), with their tar headers and
                                  the archive's pax header; gzip level 9,
                                  header time 0

and prints the size and the sha256 of each uncompressed GLUE file and each
archive, for `bundled/SOURCES.md`.
"""

import argparse
import gzip
import hashlib
import lzma
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from jaxexit.data import bundled, location

GLUE_TASKS = ("sst2",)
_XZ_PRESET = 9 | lzma.PRESET_EXTREME


def _replace_atomically(tmp: str, dest: Path) -> None:
  try:
    os.chmod(tmp, 0o644)  # mkstemp's 0o600 would travel into the wheel
    os.replace(tmp, dest)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def build_glue(task: str, data_dir: Path, out: Path) -> dict[str, str]:
  """xz-compresses every split file of `task`; returns name -> sha256."""
  spec = location.dataset_spec(task)
  folder = location.require(task, data_dir=data_dir)
  (out / spec.subdir).mkdir(parents=True, exist_ok=True)
  digests = {}
  for name in spec.files:
    raw = (folder / name).read_bytes()
    digests[f"{spec.subdir}/{name}"] = hashlib.sha256(raw).hexdigest()
    dest = out / spec.subdir / (name + bundled.GLUE_SUFFIX)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
      f.write(lzma.compress(raw, preset=_XZ_PRESET))
    _replace_atomically(tmp, dest)
  return digests


def _keep_first_per_class(
  src: tarfile.TarFile, dst: tarfile.TarFile, split: str, per_class: int
) -> None:
  counts: dict[str, int] = {}
  for info in src:
    parts = info.name.split("/")
    if info.isdir():
      dst.addfile(info)  # the split and class folders
      continue
    if not info.isfile() or len(parts) != 3 or parts[0] != split:
      raise ValueError(f"member {info.name!r} is not '{split}/<class>/<file>'")
    if counts.get(parts[1], 0) < per_class:
      counts[parts[1]] = counts.get(parts[1], 0) + 1
      dst.addfile(info, src.extractfile(info))


def build_cifar(split: str, data_dir: Path, out: Path) -> Path:
  """Writes the bundled subset archive of CIFAR-10 `split`; returns it."""
  spec = location.dataset_spec("cifar10")
  archive = location.require_file("cifar10", split, data_dir=data_dir)
  dest = out / spec.subdir / spec.splits[split]
  dest.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".tmp")
  with (
    os.fdopen(fd, "wb") as raw,
    gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
    tarfile.open(archive, "r:gz") as src,
  ):
    with tarfile.open(
      fileobj=gz,
      mode="w",
      format=tarfile.PAX_FORMAT,
      pax_headers=src.pax_headers,
    ) as dst:
      _keep_first_per_class(src, dst, split, bundled.CIFAR_PER_CLASS[split])
  _replace_atomically(tmp, dest)
  return dest


def _sha256(path: Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
    prog="python -m jaxexit.data.bundle_build",
    description=__doc__.splitlines()[0],
  )
  location.add_data_dir_flag(parser)
  parser.add_argument("--out", type=Path, default=bundled.ROOT)
  args = parser.parse_args(argv)
  for task in GLUE_TASKS:
    for name, digest in build_glue(task, args.data_dir, args.out).items():
      packed = args.out / (name + bundled.GLUE_SUFFIX)
      print(f"{name}: sha256 {digest}; {packed.stat().st_size} bytes as xz")
  for split in bundled.CIFAR_PER_CLASS:
    path = build_cifar(split, args.data_dir, args.out)
    print(
      f"{path.relative_to(args.out)}: {path.stat().st_size} bytes, "
      f"sha256 {_sha256(path)}"
    )
  licence = location.resolve_data_dir(args.data_dir) / "glue" / "LICENSE.alps"
  if licence.is_file():
    shutil.copyfile(licence, args.out / "LICENSE.alps")


if __name__ == "__main__":
  main()
