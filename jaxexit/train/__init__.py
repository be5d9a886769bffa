"""Training utilities: functional NNX step, optimizers, checkpoints, loop."""

from jaxexit.train.checkpoint import (
  CheckpointShapeMismatch,
  Checkpointer,
  NoUsableCheckpoint,
  Restored,
  abstract_like,
)
from jaxexit.train.fingerprint import (
  FingerprintMismatch,
  fingerprint_array,
  fingerprint_file,
)
from jaxexit.train.loop import train
from jaxexit.train.metrics import MetricsWriter, read_metrics
from jaxexit.train.optim import (
  OptimConfig,
  ParamGroup,
  build_optimizer,
  build_schedule,
  label_params,
  path_contains,
  train_only,
)
from jaxexit.train.precision import (
  PRECISIONS,
  Precision,
  float32_optimizer,
)
from jaxexit.train.progress import ProgressBar
from jaxexit.train.seed import base_key, step_key
from jaxexit.train.step import (
  make_eval_step,
  make_train_step,
  merge_train_state,
  split_train_state,
)

__all__ = [
  "CheckpointShapeMismatch",
  "Checkpointer",
  "FingerprintMismatch",
  "MetricsWriter",
  "NoUsableCheckpoint",
  "OptimConfig",
  "PRECISIONS",
  "ParamGroup",
  "Precision",
  "ProgressBar",
  "Restored",
  "abstract_like",
  "base_key",
  "build_optimizer",
  "build_schedule",
  "fingerprint_array",
  "fingerprint_file",
  "float32_optimizer",
  "label_params",
  "make_eval_step",
  "make_train_step",
  "merge_train_state",
  "path_contains",
  "read_metrics",
  "split_train_state",
  "step_key",
  "train_only",
  "train",
]
