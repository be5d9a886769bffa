"""Tests for jaxexit.data.glue: task registry, TSV layouts, load_glue."""

import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from jaxexit.data import glue, location

# /work/main/tests/jaxexit/data/glue_test.py -> /work/shared/data
SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
REAL_DATA = Path(os.environ.get(location.ENV_VAR) or SHARED_DATA)
GLUE_KEYS = [
  "cola",
  "sst2",
  "mrpc",
  "stsb",
  "qqp",
  "mnli",
  "qnli",
  "rte",
  "wnli",
]


def _write(
  root: Path, folder: str, split: str, lines: list[str], *, bom: bool = False
) -> Path:
  path = root / "glue" / folder / f"{split}.tsv"
  path.parent.mkdir(parents=True, exist_ok=True)
  text = "".join(line + "\n" for line in lines)
  path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
  return path


def _row(*fields) -> str:
  return "\t".join(str(f) for f in fields)


# ---------------------------------------------------------------- registry


def test_registry_covers_every_glue_task_of_location():
  assert list(glue.TASKS) == GLUE_KEYS
  for key, task in glue.TASKS.items():
    assert task.splits == tuple(location.DATASETS[key].splits), key


@pytest.mark.parametrize(
  "key,num_labels,metrics,selection",
  [
    ("cola", 2, ("mcc",), ("mcc",)),
    ("sst2", 2, ("accuracy",), ("accuracy",)),
    ("mrpc", 2, ("accuracy", "f1"), ("accuracy", "f1")),
    ("stsb", 1, ("pearson", "spearman"), ("pearson", "spearman")),
    ("qqp", 2, ("accuracy", "f1"), ("accuracy", "f1")),
    ("mnli", 3, ("accuracy",), ("accuracy",)),
    ("qnli", 2, ("accuracy",), ("accuracy",)),
    ("rte", 2, ("accuracy",), ("accuracy",)),
    ("wnli", 2, ("accuracy",), ("accuracy",)),
  ],
)
def test_task_metadata(key, num_labels, metrics, selection):
  task = glue.glue_task(key)
  assert task.num_labels == num_labels
  assert task.is_regression == (key == "stsb")
  assert task.metrics == metrics and task.selection == selection
  assert task.is_pair == (key not in ("cola", "sst2"))


def test_task_names_are_matched_loosely():
  assert glue.glue_task("SST-2").name == "sst2"
  assert glue.glue_task("glue/sts_b").name == "stsb"
  assert glue.glue_task("MNLI").name == "mnli"


@pytest.mark.parametrize("name", ["nope", "gsm8k", "cifar10"])
def test_unknown_task_lists_known_ones(name):
  with pytest.raises(ValueError, match="known tasks") as err:
    glue.load_glue(name, "train")
  for title in ("CoLA", "SST-2", "MNLI", "WNLI"):
    assert title in str(err.value)


def test_unknown_split_and_source(tmp_path):
  with pytest.raises(ValueError, match="dev_matched"):
    glue.load_glue("mnli", "dev", data_dir=tmp_path)
  with pytest.raises(ValueError, match="source"):
    glue.load_glue("sst2", "dev", data_dir=tmp_path, source="hf")


def test_missing_data_raises_data_not_found(tmp_path):
  # Offline (tests/jaxexit/data/conftest.py), and RTE is not bundled.
  with pytest.raises(location.DataNotFoundError, match="RTE"):
    glue.load_glue("rte", "dev", data_dir=tmp_path)


# ---------------------------------------------------------------- real data


@pytest.mark.parametrize(
  "key,folder", [("sst2", "SST-2"), ("rte", "RTE"), ("wnli", "WNLI")]
)
@pytest.mark.parametrize("split", ["train", "dev"])
def test_real_files(key, folder, split):
  path = REAL_DATA / "glue" / folder / f"{split}.tsv"
  if not path.is_file():
    pytest.skip(f"{path} not present")
  with open(path, "rb") as f:
    num_lines = sum(1 for _ in f)
  data = glue.load_glue(key, split, data_dir=REAL_DATA)
  assert len(data) == num_lines - 1  # header
  assert data.labels.dtype == np.int32 and data.labels.shape == (len(data),)
  assert data.labels.min() >= 0
  assert data.labels.max() < glue.TASKS[key].num_labels
  assert len(np.unique(data.labels)) == 2
  assert (data.texts_b is None) == (key == "sst2")
  assert all(data.texts_a)


def test_real_sst2_counts_match_sources():
  if not (REAL_DATA / "glue" / "SST-2" / "dev.tsv").is_file():
    pytest.skip("SST-2 not present")
  # SOURCES.md: 67,349 train and 872 dev rows (the official GLUE sizes).
  assert len(glue.load_glue("SST-2", "train", data_dir=REAL_DATA)) == 67349
  dev = glue.load_glue("SST-2", "dev", data_dir=REAL_DATA)
  assert len(dev) == 872
  assert dev.texts_a[0].startswith("it 's a charming")
  assert dev.labels[0] == 1


def test_env_var_is_the_default_data_dir(tmp_path, monkeypatch):
  _write(tmp_path, "SST-2", "dev", ["sentence\tlabel", "good .\t1"])
  monkeypatch.setenv(location.ENV_VAR, str(tmp_path))
  assert glue.load_glue("sst2", "dev").labels.tolist() == [1]


# ------------------------------------------------- synthetic official layouts


def test_cola_has_no_header(tmp_path):
  _write(
    tmp_path,
    "CoLA",
    "train",
    [
      _row(
        "gj04",
        1,
        "",
        "Our friends won't buy this analysis, let alone "
        "the next one we propose.",
      ),
      _row("gj04", 0, "*", 'They drank the pub "dry.'),  # stray quote
      _row("cj99", 1, "", "The more we study verbs, the crazier they get."),
    ],
  )
  data = glue.load_glue("cola", "train", data_dir=tmp_path)
  assert len(data) == 3  # the first line is data, not a header
  assert data.labels.tolist() == [1, 0, 1]
  assert data.texts_a[1] == 'They drank the pub "dry.'
  assert data.texts_b is None


def test_mrpc_with_bom(tmp_path):
  _write(
    tmp_path,
    "MRPC",
    "dev",
    [
      _row("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
      _row(
        1,
        1355540,
        1355592,
        "He said the foodservice pie business doesn't fit.",
        "The foodservice pie business does not fit.",
      ),
      _row(
        0,
        2029631,
        2029565,
        "Magnarelli said Racicot hated the Iraqi regime.",
        'His wife said he was "100 percent behind George.',
      ),
    ],
    bom=True,
  )
  data = glue.load_glue("mrpc", "dev", data_dir=tmp_path)
  assert data.labels.tolist() == [1, 0]
  assert data.texts_b[1].endswith('"100 percent behind George.')


def test_stsb_float_scores(tmp_path):
  header = _row(
    "index",
    "genre",
    "filename",
    "year",
    "old_index",
    "source1",
    "source2",
    "sentence1",
    "sentence2",
    "score",
  )
  _write(
    tmp_path,
    "STS-B",
    "train",
    [
      header,
      _row(
        0,
        "main-captions",
        "MSRvid",
        "2012test",
        1,
        "none",
        "none",
        "A plane is taking off.",
        "An air plane is taking off.",
        "5.000",
      ),
      _row(
        1,
        "main-captions",
        "MSRvid",
        "2012test",
        4,
        "none",
        "none",
        "A man is playing a flute.",
        "A man is playing a bamboo flute.",
        "3.800",
      ),
      _row(
        2, "main-news", "headlines", "2013", 7, "none", "none", "a", "b", "0"
      ),
    ],
  )
  data = glue.load_glue("stsb", "train", data_dir=tmp_path)
  assert data.labels.dtype == np.float32
  np.testing.assert_allclose(data.labels, [5.0, 3.8, 0.0])
  assert data.texts_b[0] == "An air plane is taking off."


def test_qqp(tmp_path):
  _write(
    tmp_path,
    "QQP",
    "dev",
    [
      _row("id", "qid1", "qid2", "question1", "question2", "is_duplicate"),
      _row(
        201359,
        303345,
        303346,
        "Why are African-Americans so beautiful?",
        "Why are hispanics so beautiful?",
        0,
      ),
      _row(
        263843,
        69383,
        380476,
        "I want to pursue PhD in Computer Science?",
        "I handle social media for a non-profit. Should I do PhD?",
        1,
      ),
    ],
  )
  data = glue.load_glue("qqp", "dev", data_dir=tmp_path)
  assert data.labels.tolist() == [0, 1]
  assert data.texts_a[0] == "Why are African-Americans so beautiful?"


_MNLI_COMMON = [
  "index",
  "promptID",
  "pairID",
  "genre",
  "sentence1_binary_parse",
  "sentence2_binary_parse",
  "sentence1_parse",
  "sentence2_parse",
  "sentence1",
  "sentence2",
]


def _mnli_row(i, s1, s2, *labels):
  return _row(
    i,
    31193,
    f"{31193 + i}n",
    "government",
    "( ( x ) )",
    "( ( y ) )",
    "(ROOT (S x))",
    "(ROOT (S y))",
    s1,
    s2,
    *labels,
  )


def test_mnli_train_and_dev_have_different_widths(tmp_path):
  _write(
    tmp_path,
    "MNLI",
    "train",
    [
      _row(*_MNLI_COMMON, "label1", "gold_label"),
      _mnli_row(
        0,
        "Conceptually cream skimming has two basic dimensions.",
        "Product and geography are what make cream skimming work.",
        "neutral",
        "neutral",
      ),
      _mnli_row(
        1,
        "you know during the season",
        "You lose the things.",
        "entailment",
        "entailment",
      ),
    ],
  )
  for split in ("dev_matched", "dev_mismatched"):
    _write(
      tmp_path,
      "MNLI",
      split,
      [
        _row(
          *_MNLI_COMMON,
          "label1",
          "label2",
          "label3",
          "label4",
          "label5",
          "gold_label",
        ),
        _mnli_row(
          0,
          "The new rights are nice enough",
          "Everyone really likes the newest benefits",
          "neutral",
          "entailment",
          "neutral",
          "neutral",
          "neutral",
          "neutral",
        ),
        _mnli_row(
          1,
          "This site includes a list",
          "The Government Executive "
          "articles housed on the website are not able to be "
          "searched.",
          "contradiction",
          "contradiction",
          "contradiction",
          "contradiction",
          "contradiction",
          "contradiction",
        ),
      ],
    )
  train = glue.load_glue("mnli", "train", data_dir=tmp_path)
  assert train.labels.tolist() == [1, 0]  # neutral, entailment
  for split in ("dev_matched", "dev_mismatched"):
    dev = glue.load_glue("mnli", split, data_dir=tmp_path)
    assert dev.labels.tolist() == [1, 2]  # gold_label is the last column
    assert dev.texts_a[0] == "The new rights are nice enough"


def test_qnli(tmp_path):
  _write(
    tmp_path,
    "QNLI",
    "train",
    [
      _row("index", "question", "sentence", "label"),
      _row(
        0,
        "When did the third Digimon series begin?",
        "Unlike the two seasons before it, it was released in 2001.",
        "not_entailment",
      ),
      _row(
        1,
        "Which missile batteries often have individual launchers?",
        "When MANPADS is operated by specialists, batteries may have "
        "several dozen teams.",
        "entailment",
      ),
    ],
  )
  data = glue.load_glue("qnli", "train", data_dir=tmp_path)
  assert data.labels.tolist() == [1, 0]


# ------------------------------------------------------------ malformed input


def _rte(tmp_path, lines):
  return _write(
    tmp_path,
    "RTE",
    "dev",
    [_row("index", "sentence1", "sentence2", "label")] + lines,
  )


def test_missing_column_names_file_and_line(tmp_path):
  path = _rte(
    tmp_path, [_row(0, "a", "b", "entailment"), _row(1, "a", "not_entailment")]
  )
  with pytest.raises(ValueError) as err:
    glue.load_glue("rte", "dev", data_dir=tmp_path)
  msg = str(err.value)
  assert f"{path}:3:" in msg and "4 tab-separated columns" in msg
  assert "has 3" in msg


def test_extra_column_from_a_tab_in_text(tmp_path):
  path = _rte(tmp_path, [_row(0, "a\tb", "c", "entailment")])
  with pytest.raises(ValueError, match=f"{path}:2:.*has 5"):
    glue.load_glue("rte", "dev", data_dir=tmp_path)


def test_unknown_label(tmp_path):
  path = _rte(
    tmp_path, [_row(0, "a", "b", "entailment"), _row(1, "a", "b", "neutral")]
  )
  with pytest.raises(ValueError, match=f"{path}:3:.*'neutral'"):
    glue.load_glue("rte", "dev", data_dir=tmp_path)


def test_wrong_header(tmp_path):
  path = _write(tmp_path, "SST-2", "dev", ["text\tlabel", "ok\t1"])
  with pytest.raises(ValueError, match=f"{path}:1: header"):
    glue.load_glue("sst2", "dev", data_dir=tmp_path)


def test_mnli_train_layout_in_a_dev_file(tmp_path):
  path = _write(
    tmp_path,
    "MNLI",
    "dev_matched",
    [
      _row(*_MNLI_COMMON, "label1", "gold_label"),
      _mnli_row(0, "a", "b", "neutral", "neutral"),
    ],
  )
  with pytest.raises(ValueError, match=f"{path}:1: header"):
    glue.load_glue("mnli", "dev_matched", data_dir=tmp_path)


@pytest.mark.parametrize("score", ["5.5", "-0.1", "nan", "high"])
def test_bad_stsb_score(tmp_path, score):
  path = _write(
    tmp_path,
    "STS-B",
    "dev",
    [
      _row(
        "index",
        "genre",
        "filename",
        "year",
        "old_index",
        "source1",
        "source2",
        "sentence1",
        "sentence2",
        "score",
      ),
      _row(0, "g", "f", "y", 0, "n", "n", "a", "b", score),
    ],
  )
  with pytest.raises(ValueError, match=f"{path}:2:.*score"):
    glue.load_glue("stsb", "dev", data_dir=tmp_path)


def test_cola_wrong_width(tmp_path):
  path = _write(
    tmp_path,
    "CoLA",
    "dev",
    [_row("gj04", 1, "", "ok ."), _row("gj04", 1, "ok .")],
  )
  with pytest.raises(ValueError, match=f"{path}:2:"):
    glue.load_glue("cola", "dev", data_dir=tmp_path)


# ---------------------------------------------------------------- tfds path


def test_tfds_not_installed(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(glue.TfdsUnavailableError, match="tensorflow-datasets"):
    glue.load_glue("sst2", "dev", source="tfds")
  assert issubclass(glue.TfdsUnavailableError, location.DataNotFoundError)


def _fake_tfds(monkeypatch, load):
  calls = []

  def record(*args, **kwargs):
    calls.append((args, kwargs))
    return load()

  fake = types.ModuleType("tensorflow_datasets")
  fake.load = record
  fake.as_numpy = lambda x: x
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
  return calls


def test_tfds_unprepared_never_downloads(monkeypatch, tmp_path):
  def load():
    raise AssertionError("Dataset glue: could not find data in ...")

  calls = _fake_tfds(monkeypatch, load)
  with pytest.raises(glue.TfdsUnavailableError, match="could not find data"):
    glue.load_glue("mnli", "dev_mismatched", source="tfds", data_dir=tmp_path)
  ((args, kwargs),) = calls
  assert args == ("glue/mnli",)
  assert kwargs["download"] is False
  assert kwargs["split"] == "validation_mismatched"
  assert kwargs["data_dir"] == tmp_path


def test_tfds_prepared_data_is_converted(monkeypatch):
  _fake_tfds(
    monkeypatch,
    lambda: {
      "sentence1": np.array([b"a", "caf\u00e9".encode()], dtype=object),
      "sentence2": np.array([b"b", b"d"], dtype=object),
      "label": np.array([3.5, 1.0], np.float32),
      "idx": np.array([0, 1]),
    },
  )
  data = glue.load_glue("stsb", "dev", source="tfds")
  assert data.texts_a == ["a", "caf\u00e9"] and data.texts_b == ["b", "d"]
  assert data.labels.dtype == np.float32
  np.testing.assert_allclose(data.labels, [3.5, 1.0])


def test_real_tfds_without_prepared_data(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(glue.TfdsUnavailableError):
    glue.load_glue("rte", "dev", source="tfds", data_dir=tmp_path)


# ------------------------------------------- issue 21: empty and non-UTF-8


@pytest.mark.parametrize(
  "lines",
  [[], [_row("index", "sentence1", "sentence2", "label")]],
  ids=["empty", "header_only"],
)
def test_split_without_examples_names_the_file(tmp_path, lines):
  path = _write(tmp_path, "RTE", "train", lines)
  with pytest.raises(ValueError, match=f"{path}: .*has no examples"):
    glue.load_glue("rte", "train", data_dir=tmp_path)


def test_non_utf8_names_file_and_line(tmp_path):
  path = _rte(tmp_path, [_row(0, "a", "b", "entailment")])
  with open(path, "ab") as f:
    f.write(b"1\tcaf\xe9\tb\tentailment\n")  # Latin-1, not UTF-8
  with pytest.raises(ValueError) as err:
    glue.load_glue("rte", "dev", data_dir=tmp_path)
  msg = str(err.value)
  assert f"{path}:3: not valid UTF-8 (byte 0xe9" in msg
