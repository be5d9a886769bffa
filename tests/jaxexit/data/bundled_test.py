"""Tests for jaxexit.data.bundled: the shipped copies and their records."""

import fnmatch
import hashlib
import lzma
import re
import tomllib
from pathlib import Path

import pytest

from jaxexit.data import bundled

REPO = Path(__file__).resolve().parents[3]
SHARED_DATA = REPO.parent / "shared" / "data"


def _files() -> list[str]:
  return sorted(
    str(p.relative_to(bundled.ROOT))
    for p in bundled.ROOT.rglob("*")
    if p.is_file()
  )


def test_the_expected_copies_are_shipped():
  assert _files() == [
    "LICENSE.alps",
    "SOURCES.md",
    "cifar10/SOURCES.md",
    "cifar10/cifar10_test_jpg.tar.gz",
    "cifar10/cifar10_train_jpg.tar.gz",
    "glue/SST-2/SOURCES.md",
    "glue/SST-2/dev.tsv.xz",
    "glue/SST-2/train.tsv.xz",
  ]
  assert bundled.glue_file("SST-2", "train").name == "train.tsv.xz"
  assert bundled.glue_file("rte", "dev") is None
  assert bundled.cifar_archive("test").parent.name == "cifar10"
  assert bundled.cifar_subset_size("train") == 5000


def test_sizes_stay_small():
  size = {f: (bundled.ROOT / f).stat().st_size for f in _files()}
  assert sum(v for f, v in size.items() if f.startswith("glue/")) < 2e6
  assert sum(v for f, v in size.items() if f.startswith("cifar10/")) < 4e6


def test_every_bundled_file_is_package_data():
  config = tomllib.loads((REPO / "pyproject.toml").read_text())
  globs = config["tool"]["setuptools"]["package-data"]["jaxexit.data"]
  for name in _files():
    assert any(fnmatch.fnmatch(f"bundled/{name}", g) for g in globs), name


def test_sources_md_lists_the_sha256_of_each_uncompressed_glue_file():
  sources = (bundled.ROOT / "SOURCES.md").read_text()
  for path in sorted((bundled.ROOT / "glue").rglob("*.xz")):
    digest = hashlib.sha256(lzma.decompress(path.read_bytes())).hexdigest()
    row = next(
      line
      for line in sources.splitlines()
      if f"`glue/SST-2/{path.name}`" in line
    )
    assert digest in row, path.name
  for path in sorted((bundled.ROOT / "cifar10").glob("*.tar.gz")):
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest in sources and f"{path.stat().st_size:,}" in sources
  assert re.search(r"forest-snow/alps at commit `3c7ef2c98249`", sources)
  assert "d7d05618061fe37d830fb0419063d113c575ccbc" in sources


@pytest.mark.skipif(
  not (SHARED_DATA / "glue" / "LICENSE.alps").is_file(),
  reason="shared data not available",
)
def test_licence_is_the_alps_licence():
  shipped = (bundled.ROOT / "LICENSE.alps").read_bytes()
  assert shipped == (SHARED_DATA / "glue" / "LICENSE.alps").read_bytes()
  assert shipped.startswith(b"MIT License")
