"""Data copies shipped inside the package, for runs without a data dir.

A fresh install has no data dir, so the default experiments would stop at
`DataNotFoundError`. These copies, installed as package data below
`jaxexit/data/bundled/`, keep them running:

  glue/SST-2/{train,dev}.tsv.xz           GLUE SST-2 whole (67,349 / 872)
  cifar10/cifar10_{train,test}_jpg.tar.gz  CIFAR-10 subset: the first 500 /
                                           100 images of each class
  bundled/SOURCES.md, LICENSE.alps         provenance, checksums, licence
                                           (and a short SOURCES file in
                                           each dataset folder)

Loaders read them only when the data dir lacks the dataset, and say so on
stderr (`notice`). `jaxexit.data.bundle_build` re-creates them from a data
dir.
"""

import os
import sys
from pathlib import Path

from jaxexit.data import location

ROOT = Path(__file__).resolve().parent / "bundled"
SOURCES = "jaxexit/data/bundled/SOURCES.md"
# GLUE files are stored xz-compressed under their data-dir names.
GLUE_SUFFIX = ".xz"
CIFAR_PER_CLASS = {"train": 500, "test": 100}
CIFAR_FULL = {"train": 50_000, "test": 10_000}
CIFAR_NUM_CLASSES = 10


def glue_file(task: str, split: str) -> Path | None:
  """The bundled file of one GLUE split, or None when none is shipped.

  Args:
    task: a GLUE task name (see `jaxexit.data.location.dataset_spec`).
    split: a split of that task.

  Returns:
    `<ROOT>/glue/<TASK>/<split file>.xz` if it exists.
  """
  spec = location.dataset_spec(task)
  path = ROOT / spec.subdir / (spec.splits[split] + GLUE_SUFFIX)
  return path if path.is_file() else None


def cifar_archive(split: str) -> Path | None:
  """The bundled CIFAR-10 subset archive of `split`, or None if absent."""
  spec = location.dataset_spec("cifar10")
  path = ROOT / spec.subdir / spec.splits[split]
  return path if path.is_file() else None


def cifar_subset_size(split: str) -> int:
  """Images in the bundled CIFAR-10 `split` (500 or 100 per class)."""
  return CIFAR_PER_CLASS[split] * CIFAR_NUM_CLASSES


def notice(message: str) -> None:
  """Prints one line about where data came from (stderr, flushed)."""
  print(message, file=sys.stderr, flush=True)


def missing_from(dataset: str, data_dir: str | os.PathLike | None) -> str:
  """`<data dir>/<subdir>` of `dataset`, for notices."""
  spec = location.dataset_spec(dataset)
  return str(location.resolve_data_dir(data_dir) / spec.subdir)
