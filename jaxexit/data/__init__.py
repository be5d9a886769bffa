"""Datasets: where they live on disk (`location`), their loaders, image
augmentation (`augment`) and batch indices (`batching`).

When the data dir lacks a dataset, GLUE SST-2 and a CIFAR-10 subset come
from copies shipped in the package (`bundled`), and other GLUE tasks are
fetched from the official zips unless `$JAXEXIT_OFFLINE` is set
(`glue_sources`, `glue_fetch`).

`jaxexit.data.tokenize` needs the `models` extra (`tokenizers`) and is not
imported here.
"""

from jaxexit.data.augment import (
  CIFAR10_MEAN,
  CIFAR10_STD,
  normalize,
  random_crop_flip,
  resize,
)
from jaxexit.data.batching import (
  EvalBatch,
  eval_batches,
  shuffled_batch_indices,
)
from jaxexit.data.cifar import (
  CorruptDataError,
  ImageSplit,
  load_cifar,
  train_val_split,
)
from jaxexit.data.cifar_vqa import load_cifar_vqa
from jaxexit.data.fetch import OFFLINE_ENV_VAR, ChecksumError, FetchError
from jaxexit.data.glue import (
  TASKS,
  GlueSplit,
  GlueTask,
  TfdsUnavailableError,
  glue_task,
  load_glue,
)
from jaxexit.data.glue_fetch import fetch_glue
from jaxexit.data.location import (
  DATASETS,
  ENV_VAR,
  FLAG,
  DataNotFoundError,
  DatasetSpec,
  add_data_dir_flag,
  dataset_spec,
  default_data_dir,
  how_to_obtain,
  require,
  require_file,
  resolve_data_dir,
)
from jaxexit.data.shapes_vqa import (
  ShapesScenes,
  ShapesVQAConfig,
  make_shapes_vqa,
)
from jaxexit.data.vqa_set import QUESTION_LEN, VQASet
from jaxexit.data.vqa_vocab import VQAVocab

__all__ = [
  "CIFAR10_MEAN",
  "CIFAR10_STD",
  "DATASETS",
  "ENV_VAR",
  "FLAG",
  "OFFLINE_ENV_VAR",
  "ChecksumError",
  "FetchError",
  "fetch_glue",
  "QUESTION_LEN",
  "ShapesScenes",
  "ShapesVQAConfig",
  "VQASet",
  "VQAVocab",
  "load_cifar_vqa",
  "make_shapes_vqa",
  "TASKS",
  "CorruptDataError",
  "DataNotFoundError",
  "DatasetSpec",
  "EvalBatch",
  "GlueSplit",
  "GlueTask",
  "ImageSplit",
  "TfdsUnavailableError",
  "add_data_dir_flag",
  "dataset_spec",
  "default_data_dir",
  "eval_batches",
  "glue_task",
  "how_to_obtain",
  "load_cifar",
  "load_glue",
  "normalize",
  "random_crop_flip",
  "require",
  "require_file",
  "resize",
  "resolve_data_dir",
  "shuffled_batch_indices",
  "train_val_split",
]
