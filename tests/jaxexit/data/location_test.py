"""Tests for jaxexit.data.location: the one data-location setting."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxexit import data
from jaxexit.data import location
from tests.tiers import slow

# /work/main/tests/jaxexit/data/location_test.py -> /work/shared/data
SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"


@pytest.fixture
def no_env(monkeypatch, tmp_path):
  """No JAXEXIT_DATA, and a fake home so the default is inside tmp_path."""
  monkeypatch.delenv(location.ENV_VAR, raising=False)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  return tmp_path


def test_default_is_under_home_cache(no_env):
  want = no_env / "home" / ".cache" / "jaxexit" / "data"
  assert data.resolve_data_dir() == want
  assert data.resolve_data_dir(None) == want
  assert data.resolve_data_dir("") == want  # an empty flag counts as unset


def test_env_beats_default(no_env, monkeypatch):
  monkeypatch.setenv(location.ENV_VAR, str(no_env / "from_env"))
  assert data.resolve_data_dir() == no_env / "from_env"


def test_flag_beats_env(no_env, monkeypatch):
  monkeypatch.setenv(location.ENV_VAR, str(no_env / "from_env"))
  assert data.resolve_data_dir(str(no_env / "flag")) == no_env / "flag"
  assert data.resolve_data_dir(no_env / "flag") == no_env / "flag"


def test_empty_env_falls_back_to_default(no_env, monkeypatch):
  monkeypatch.setenv(location.ENV_VAR, "")
  assert data.resolve_data_dir() == data.default_data_dir()


def test_tilde_is_expanded(no_env):
  assert data.resolve_data_dir("~/d") == no_env / "home" / "d"


def test_flag_parses_into_resolve(no_env, monkeypatch):
  monkeypatch.setenv(location.ENV_VAR, str(no_env / "from_env"))
  parser = argparse.ArgumentParser()
  data.add_data_dir_flag(parser)
  unset = parser.parse_args([])
  assert unset.data_dir is None
  assert data.resolve_data_dir(unset.data_dir) == no_env / "from_env"
  given = parser.parse_args(["--data-dir", str(no_env / "flag")])
  assert data.resolve_data_dir(given.data_dir) == no_env / "flag"


def _write(root: Path, spec: data.DatasetSpec) -> Path:
  folder = root / spec.subdir
  folder.mkdir(parents=True)
  for name in spec.files:
    (folder / name).write_text("x\n")
  return folder


def test_require_finds_every_registered_layout(no_env):
  for name, spec in data.DATASETS.items():
    folder = _write(no_env / "root", spec)
    assert data.require(name, data_dir=no_env / "root") == folder


def test_require_uses_env_when_no_flag(no_env, monkeypatch):
  folder = _write(no_env / "root", data.DATASETS["rte"])
  monkeypatch.setenv(location.ENV_VAR, str(no_env / "root"))
  assert data.require("rte") == folder
  assert data.require_file("rte", "dev") == folder / "dev.tsv"


def test_require_does_not_fall_back_past_the_chosen_dir(no_env, monkeypatch):
  _write(no_env / "env_root", data.DATASETS["rte"])
  monkeypatch.setenv(location.ENV_VAR, str(no_env / "env_root"))
  with pytest.raises(data.DataNotFoundError):
    data.require("rte", data_dir=no_env / "empty")


def test_missing_data_error_lists_paths_and_how_to_obtain(no_env):
  root = no_env / "nothing_here"
  with pytest.raises(data.DataNotFoundError) as err:
    data.require("sst2", data_dir=root)
  msg = str(err.value)
  assert isinstance(err.value, FileNotFoundError)
  assert "'sst2'" in msg
  for path in (
    root / "glue" / "SST-2",
    root / "glue/SST-2/train.tsv",
    root / "glue/SST-2/dev.tsv",
  ):
    assert str(path) in msg
  assert "tfds.load('glue/sst2')" in msg
  assert "https://dl.fbaipublicfiles.com/glue/data/SST-2.zip" in msg
  assert "--data-dir" in msg and location.ENV_VAR in msg
  assert "from --data-dir" in msg


def test_missing_data_error_says_which_setting_chose_the_dir(no_env):
  with pytest.raises(data.DataNotFoundError, match="default"):
    data.require("gsm8k")
  with pytest.raises(data.DataNotFoundError, match=r"tfds.load\('gsm8k'\)"):
    data.require("gsm8k")


def test_partial_dataset_lists_only_missing_file_as_missing(no_env):
  spec = data.DATASETS["mnli"]
  folder = no_env / spec.subdir
  folder.mkdir(parents=True)
  (folder / "train.tsv").write_text("x\n")
  assert data.require("mnli", data_dir=no_env, files=["train"]) == folder
  with pytest.raises(data.DataNotFoundError) as err:
    data.require("mnli", data_dir=no_env, files=["train", "dev_matched.tsv"])
  msg = str(err.value)
  assert f"{folder / 'train.tsv'}  [found]" in msg
  assert f"{folder / 'dev_matched.tsv'}  [missing]" in msg


def test_dataset_without_tfds_builder_says_so(no_env):
  with pytest.raises(data.DataNotFoundError, match="no tensorflow-datasets"):
    data.require("commonsenseqa", data_dir=no_env)


def test_unknown_dataset_lists_known_ones():
  with pytest.raises(ValueError) as err:
    data.require("imagenet")
  msg = str(err.value)
  assert "imagenet" in msg
  for name in ("sst2", "mnli", "gsm8k", "cifar10", "truthfulqa"):
    assert name in msg


def test_unknown_split_is_a_value_error(no_env):
  with pytest.raises(ValueError, match="dev_matched"):
    data.require_file("mnli", "dev", data_dir=no_env)


def test_name_aliases():
  assert data.dataset_spec("SST-2") is data.DATASETS["sst2"]
  assert data.dataset_spec("glue/stsb") is data.DATASETS["stsb"]
  assert data.dataset_spec("STS-B").subdir == "glue/STS-B"
  assert data.dataset_spec("commonsense_qa").name == "commonsenseqa"


def test_registry_layouts():
  glue = {
    "cola": "CoLA",
    "sst2": "SST-2",
    "mrpc": "MRPC",
    "stsb": "STS-B",
    "qqp": "QQP",
    "mnli": "MNLI",
    "qnli": "QNLI",
    "rte": "RTE",
    "wnli": "WNLI",
  }
  for key, folder in glue.items():
    spec = data.DATASETS[key]
    assert spec.subdir == f"glue/{folder}"
    assert spec.tfds_name == f"glue/{key}"
  assert data.DATASETS["mnli"].files == (
    "train.tsv",
    "dev_matched.tsv",
    "dev_mismatched.tsv",
  )
  assert data.DATASETS["cifar10"].files == (
    "cifar10_train_jpg.tar.gz",
    "cifar10_test_jpg.tar.gz",
  )
  assert data.DATASETS["truthfulqa"].files == ("TruthfulQA.csv",)


@slow
def test_importing_does_not_import_tensorflow_datasets():
  # A fresh interpreter: other tests in this process may import tfds.
  code = (
    "import sys, jaxexit.data, jaxexit.cost; "
    "sys.exit('tensorflow_datasets' in sys.modules)"
  )
  subprocess.run(
    [sys.executable, "-c", code],
    check=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )


@pytest.mark.skipif(
  not SHARED_DATA.is_dir(), reason=f"no offline data at {SHARED_DATA}"
)
@pytest.mark.parametrize(
  "name, subdir",
  [
    ("sst2", "glue/SST-2"),
    ("rte", "glue/RTE"),
    ("wnli", "glue/WNLI"),
    ("gsm8k", "gsm8k"),
    ("commonsenseqa", "commonsenseqa"),
    ("truthfulqa", "truthfulqa"),
    ("cifar10", "cifar10"),
  ],
)
def test_real_shared_data_is_found(name, subdir, monkeypatch):
  monkeypatch.setenv(location.ENV_VAR, str(SHARED_DATA))
  folder = data.require(name)
  assert folder == SHARED_DATA / subdir
  for split, file_name in data.DATASETS[name].splits.items():
    path = data.require_file(name, split)
    assert path == folder / file_name and path.stat().st_size > 0
