# Over 400 lines: the GLUE task table and the one loader that reads it.
"""GLUE tasks: the registry of file layouts and metrics, and `load_glue`.

GLUE (Wang et al., 2019, "GLUE: A Multi-Task Benchmark and Analysis Platform
for Natural Language Understanding") ships each task as TSV files. `TASKS`
records, for every task, the column layout of each split's file as written by
the original distribution (`download_glue_data.py`), the label set (or
regression for STS-B), the official dev metrics and the "selection" metric
used to pick checkpoints on dev (the mean of `selection` metrics).

Files are found through `jaxexit.data.glue_sources.glue_split_file`: the
data dir (the one data-location setting of `jaxexit.data.location`), else
the copy bundled with jaxexit (SST-2), else the official zip fetched into the
data dir unless `$JAXEXIT_OFFLINE` is set. They are read with
`csv.QUOTE_NONE`: GLUE sentences contain unbalanced quotes, which the default
dialect would merge across lines.

Axes: `B` examples (the batch axis of the repo vocabulary).
"""

import csv
import dataclasses
import lzma
import math
import os
from pathlib import Path

import numpy as np
from jaxtyping import Float32, Int32

from jaxexit import checks
from jaxexit.data import glue_sources, location


@dataclasses.dataclass(frozen=True, kw_only=True)
class TsvLayout:
  """Columns of one GLUE TSV file.

  Attributes:
    columns: every column name, in file order; for a file with a header these
      are exactly its header fields.
    has_header: whether the first line is a header (CoLA train/dev are not).
    text_a: column of the first sentence.
    text_b: column of the second sentence, or None for single-sentence tasks.
    label: column of the label (gold label, or score for STS-B).
  """

  columns: tuple[str, ...]
  has_header: bool
  text_a: str
  text_b: str | None
  label: str

  def __post_init__(self):
    for name in (self.text_a, self.text_b, self.label):
      if name is not None and name not in self.columns:
        raise ValueError(f"column {name!r} not in {self.columns}")

  def index(self, name: str) -> int:
    """Position of column `name`."""
    return self.columns.index(name)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GlueTask:
  """One GLUE task.

  Attributes:
    name: registry key, as in `jaxexit.data.location` ("sst2", "mnli", ...).
    title: the official name ("SST-2").
    layouts: split name -> `TsvLayout` of that split's file.
    label_names: the label strings of the TSV, label id = position; None for
      regression (STS-B, float scores in [0, 5]).
    metrics: official GLUE metrics, names understood by
      `jaxexit.glue_metrics.glue_score`.
    selection: metrics whose mean is the dev selection metric.
    tfds_features: tensorflow-datasets feature names of (text_a, text_b).
  """

  name: str
  title: str
  layouts: dict[str, TsvLayout]
  label_names: tuple[str, ...] | None
  metrics: tuple[str, ...]
  selection: tuple[str, ...]
  tfds_features: tuple[str, str | None]

  @property
  def is_regression(self) -> bool:
    return self.label_names is None

  @property
  def num_labels(self) -> int:
    """Output width of a head: classes, or 1 for regression."""
    return 1 if self.label_names is None else len(self.label_names)

  @property
  def is_pair(self) -> bool:
    return self.tfds_features[1] is not None

  @property
  def splits(self) -> tuple[str, ...]:
    return tuple(self.layouts)


def _headed(
  columns: str, text_a: str, text_b: str | None, label: str
) -> TsvLayout:
  return TsvLayout(
    columns=tuple(columns.split()),
    has_header=True,
    text_a=text_a,
    text_b=text_b,
    label=label,
  )


_PAIR4 = _headed(
  "index sentence1 sentence2 label", "sentence1", "sentence2", "label"
)
_MNLI_PARSES = (
  "index promptID pairID genre sentence1_binary_parse "
  "sentence2_binary_parse sentence1_parse sentence2_parse "
  "sentence1 sentence2 "
)
_MNLI_TRAIN = _headed(
  _MNLI_PARSES + "label1 gold_label", "sentence1", "sentence2", "gold_label"
)
_MNLI_DEV = _headed(
  _MNLI_PARSES + "label1 label2 label3 label4 label5 gold_label",
  "sentence1",
  "sentence2",
  "gold_label",
)
# CoLA train/dev: source code, label, the author's acceptability mark ("*" or
# empty), sentence; no header line.
_COLA = TsvLayout(
  columns=("source", "label", "original_label", "sentence"),
  has_header=False,
  text_a="sentence",
  text_b=None,
  label="label",
)
# MRPC headers contain spaces, so they are spelled out.
_MRPC = TsvLayout(
  columns=("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"),
  has_header=True,
  text_a="#1 String",
  text_b="#2 String",
  label="Quality",
)
_STSB = _headed(
  "index genre filename year old_index source1 source2 "
  "sentence1 sentence2 score",
  "sentence1",
  "sentence2",
  "score",
)
_QQP = _headed(
  "id qid1 qid2 question1 question2 is_duplicate",
  "question1",
  "question2",
  "is_duplicate",
)
_QNLI = _headed(
  "index question sentence label", "question", "sentence", "label"
)
_SST2 = _headed("sentence label", "sentence", None, "label")

_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
# Label ids follow tensorflow-datasets / HF `datasets` GLUE, so the TSV and
# tfds sources agree.
_NLI3 = ("entailment", "neutral", "contradiction")
_ACC = ("accuracy",)


def _task(
  name,
  title,
  layout,
  label_names,
  metrics,
  selection,
  features,
  *,
  layouts=None,
) -> GlueTask:
  return GlueTask(
    name=name,
    title=title,
    layouts=layouts or {"train": layout, "dev": layout},
    label_names=label_names,
    metrics=metrics,
    selection=selection,
    tfds_features=features,
  )


TASKS: dict[str, GlueTask] = {
  t.name: t
  for t in [
    _task(
      "cola", "CoLA", _COLA, _BINARY, ("mcc",), ("mcc",), ("sentence", None)
    ),
    _task("sst2", "SST-2", _SST2, _BINARY, _ACC, _ACC, ("sentence", None)),
    _task(
      "mrpc",
      "MRPC",
      _MRPC,
      _BINARY,
      ("accuracy", "f1"),
      ("accuracy", "f1"),
      ("sentence1", "sentence2"),
    ),
    _task(
      "stsb",
      "STS-B",
      _STSB,
      None,
      ("pearson", "spearman"),
      ("pearson", "spearman"),
      ("sentence1", "sentence2"),
    ),
    _task(
      "qqp",
      "QQP",
      _QQP,
      _BINARY,
      ("accuracy", "f1"),
      ("accuracy", "f1"),
      ("question1", "question2"),
    ),
    _task(
      "mnli",
      "MNLI",
      None,
      _NLI3,
      _ACC,
      _ACC,
      ("premise", "hypothesis"),
      layouts={
        "train": _MNLI_TRAIN,
        "dev_matched": _MNLI_DEV,
        "dev_mismatched": _MNLI_DEV,
      },
    ),
    _task("qnli", "QNLI", _QNLI, _NLI2, _ACC, _ACC, ("question", "sentence")),
    _task("rte", "RTE", _PAIR4, _NLI2, _ACC, _ACC, ("sentence1", "sentence2")),
    _task(
      "wnli", "WNLI", _PAIR4, _BINARY, _ACC, _ACC, ("sentence1", "sentence2")
    ),
  ]
}

STS_B_RANGE = (0.0, 5.0)
SOURCES = ("tsv", "tfds")
_TFDS_SPLITS = {
  "train": "train",
  "dev": "validation",
  "dev_matched": "validation_matched",
  "dev_mismatched": "validation_mismatched",
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class GlueSplit:
  """One split of one GLUE task, as Python strings and a label array.

  Attributes:
    task: registry key ("sst2").
    split: split name ("train", "dev", "dev_matched", ...).
    texts_a: [B] first sentences.
    texts_b: [B] second sentences, or None for single-sentence tasks.
    labels: [B] int32 label ids (positions in `GlueTask.label_names`), or
      float32 similarity scores in [0, 5] for STS-B.
  """

  task: str
  split: str
  texts_a: list[str]
  texts_b: list[str] | None
  labels: Int32[np.ndarray, "B"] | Float32[np.ndarray, "B"]

  def __post_init__(self):
    n = len(self.texts_a)
    if len(self.labels) != n or (
      self.texts_b is not None and len(self.texts_b) != n
    ):
      raise ValueError(
        f"lengths differ: texts_a={n}, labels={len(self.labels)}, texts_b="
        f"{None if self.texts_b is None else len(self.texts_b)}"
      )

  def __len__(self) -> int:
    return len(self.texts_a)


class TfdsUnavailableError(location.DataNotFoundError):
  """`source="tfds"` was asked for, but prepared tfds data cannot be read."""


def glue_task(task: str) -> GlueTask:
  """The registry entry of `task`.

  Matching ignores case, '-', '_' and a "glue/" prefix ("SST-2", "glue/sst2").

  Args:
    task: a GLUE task name.

  Returns:
    Its `GlueTask`.

  Raises:
    ValueError: not a GLUE task; the message lists the known ones.
  """
  try:
    key = location.dataset_spec(task).name
  except ValueError:
    key = None
  if key not in TASKS:
    titles = [t.title for t in TASKS.values()]
    raise ValueError(
      f"unknown GLUE task={task!r}; known tasks: {titles} (keys {list(TASKS)})"
    )
  return TASKS[key]


def _parse_label(spec: GlueTask, raw: str) -> int | float | None:
  """The label id (or score), or None if `raw` is not a valid label."""
  if spec.label_names is None:
    try:
      score = float(raw)
    except ValueError:
      return None
    low, high = STS_B_RANGE
    return score if math.isfinite(score) and low <= score <= high else None
  try:
    return spec.label_names.index(raw)
  except ValueError:
    return None


def _check_utf8(path, line_no: int, row: list[str]) -> None:
  """Raises on bytes that are not UTF-8 (decoded as surrogate escapes)."""
  try:
    "\t".join(row).encode("utf-8")
  except UnicodeEncodeError as e:
    byte = ord(e.object[e.start]) - 0xDC00
    raise ValueError(
      f"{path}:{line_no}: not valid UTF-8 (byte 0x{byte:02x} at character "
      f"{e.start + 1} of the line); re-save the file as UTF-8"
    ) from None


def read_glue_tsv(
  path: str | os.PathLike, spec: GlueTask, split: str
) -> GlueSplit:
  """Reads one GLUE TSV in the layout `spec.layouts[split]`.

  Args:
    path: the file (`.xz`: xz-compressed, as the bundled copies are).
    spec: its task.
    split: its split (chooses the layout: MNLI train and dev differ).

  Returns:
    The `GlueSplit`.

  Raises:
    ValueError: a header or row does not match the layout, a label is not
      in the label set, or a line is not UTF-8; the message is
      `<file>:<line>: <what was wrong>` (1-based line numbers, counting the
      header). Also a file without examples (empty or header only), named.
  """
  checks.one_of(f"split of {spec.name}", split, spec.splits)
  layout = spec.layouts[split]
  ia, il = layout.index(layout.text_a), layout.index(layout.label)
  ib = None if layout.text_b is None else layout.index(layout.text_b)
  width = len(layout.columns)
  texts_a, texts_b, labels = [], [], []
  where = f"GLUE {spec.title} {split}"
  opener = lzma.open if str(path).endswith(".xz") else open
  # utf-8-sig: MRPC files built from Microsoft's release may start with a BOM.
  # surrogateescape: a non-UTF-8 byte is reported with its line, not as a
  # bare UnicodeDecodeError from the decoder's buffer.
  with opener(
    path, "rt", encoding="utf-8-sig", newline="", errors="surrogateescape"
  ) as f:
    reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
    for line_no, row in enumerate(reader, start=1):
      _check_utf8(path, line_no, row)
      if line_no == 1 and layout.has_header:
        if tuple(c.strip() for c in row) != layout.columns:
          raise ValueError(
            f"{path}:1: header of {where} should be "
            f"{list(layout.columns)}; got {row}"
          )
        continue
      if len(row) != width:
        raise ValueError(
          f"{path}:{line_no}: {where} rows have {width} tab-separated "
          f"columns {list(layout.columns)}; this line has {len(row)}: "
          f"{row!r:.200}"
        )
      label = _parse_label(spec, row[il])
      if label is None:
        allowed = (
          f"a score in {list(STS_B_RANGE)}"
          if spec.is_regression
          else f"one of {list(spec.label_names)}"
        )
        raise ValueError(
          f"{path}:{line_no}: {where} label column {layout.label!r} must "
          f"be {allowed}; got {row[il]!r}"
        )
      texts_a.append(row[ia])
      if ib is not None:
        texts_b.append(row[ib])
      labels.append(label)
  if not labels:
    raise ValueError(
      f"{path}: {where} has no examples (the file is empty "
      "or holds only its header)"
    )
  dtype = np.float32 if spec.is_regression else np.int32
  return GlueSplit(
    task=spec.name,
    split=split,
    texts_a=texts_a,
    texts_b=texts_b if ib is not None else None,
    labels=np.asarray(labels, dtype=dtype).reshape(-1),
  )


def _load_tfds(
  spec: GlueTask, split: str, data_dir: str | os.PathLike | None
) -> GlueSplit:
  """Reads already-prepared tfds `glue/<task>`; never downloads."""
  name, tfds_split = f"glue/{spec.name}", _TFDS_SPLITS[split]
  fallback = f"Use source='tsv' instead. {location.how_to_obtain(spec.name)}"
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise TfdsUnavailableError(
      f"source='tfds' needs tensorflow-datasets (and TensorFlow to read "
      f"GLUE's tfrecord files), which is not importable ({e}).\n"
      f"{fallback}"
    ) from e
  try:
    # download=False: tfds only reads what `download_and_prepare` already
    # wrote; an unprepared dataset raises instead of reaching the network.
    ds = tfds.load(
      name, split=tfds_split, data_dir=data_dir, download=False, batch_size=-1
    )
    arrays = tfds.as_numpy(ds)
  except Exception as e:  # tfds raises assorted types; all mean "unavailable".
    raise TfdsUnavailableError(
      f"cannot read prepared tfds {name!r} split {tfds_split!r} from "
      f"data_dir={data_dir} (None: the tfds default) without downloading: "
      f"{type(e).__name__}: {e}\n{fallback}"
    ) from e

  def texts(key):
    return [
      t.decode("utf-8") if isinstance(t, bytes) else str(t)
      for t in np.asarray(arrays[key]).tolist()
    ]

  key_a, key_b = spec.tfds_features
  dtype = np.float32 if spec.is_regression else np.int32
  return GlueSplit(
    task=spec.name,
    split=split,
    texts_a=texts(key_a),
    texts_b=None if key_b is None else texts(key_b),
    labels=np.asarray(arrays["label"]).astype(dtype).reshape(-1),
  )


def load_glue(
  task: str,
  split: str,
  *,
  data_dir: str | os.PathLike | None = None,
  source: str = "tsv",
) -> GlueSplit:
  """Loads one labelled split of a GLUE task.

  Args:
    task: a GLUE task ("sst2", "SST-2", "mnli", ...; see `TASKS`).
    split: "train" or "dev"; for MNLI "train", "dev_matched" or
      "dev_mismatched".
    data_dir: for source="tsv", the jaxexit data dir (None: `$JAXEXIT_DATA`,
      then the default; see `jaxexit.data.location`); for source="tfds", the
      tensorflow-datasets data dir (None: the tfds default).
    source: "tsv" reads `<data_dir>/glue/<TASK>/<split>.tsv`, else the
      bundled copy, else fetches the task's official zip into the data dir
      (not when `$JAXEXIT_OFFLINE` is set; see
      `jaxexit.data.glue_sources`); "tfds" reads tensorflow-datasets'
      already-prepared `glue/<task>` and never downloads.

  Returns:
    A `GlueSplit` with `B` examples.

  Raises:
    ValueError: unknown task, split or source, or a malformed file (the
      message names the file and 1-based line).
    DataNotFoundError: the TSV file is missing, not bundled and could not
      be fetched (the message says why and how to get it).
    TfdsUnavailableError: source="tfds" and tfds, TensorFlow or the prepared
      data is unavailable.
  """
  spec = glue_task(task)
  checks.one_of(f"split of {spec.name}", split, spec.splits)
  checks.one_of("source", source, SOURCES)
  if source == "tfds":
    return _load_tfds(spec, split, data_dir)
  path = glue_sources.glue_split_file(spec.name, split, data_dir=data_dir)
  return read_glue_tsv(Path(path), spec, split)
