"""Accuracy per question type and side-by-side wall time of the methods."""

import numpy as np

from experiments.cli import shard_rows, to_host
from experiments.hidrop import run, summary
from experiments.hidrop.configs import Config
from jaxexit import timing
from jaxexit.data import eval_batches
from jaxexit.models.feature_llava import FeatureLlavaLM
from jaxexit.models.llava import LlavaLM
from jaxexit.pruning import VisionSchedule


def correct(
  cfg: Config,
  model: LlavaLM | FeatureLlavaLM,
  schedule: VisionSchedule,
  test_set: run.Batch,
  *,
  impl: str,
  mesh=None,
) -> np.ndarray:
  """[N] bool: exact match of the argmax answer word, per test example
  (the rows of each batch split over `mesh`; None: one device)."""
  prefill, params = run.make_prefill(model, schedule, impl=impl)
  num = len(test_set["answer"])
  preds = np.empty(num, np.int32)
  for idx, valid in eval_batches(num, cfg.eval_batch):
    batch = shard_rows(run.take(test_set, idx), mesh)
    out = to_host(prefill(params, batch).argmax(-1))
    preds[idx[:valid]] = out[:valid]
  return preds == test_set["answer"]


def accuracy(
  cfg: Config,
  model: LlavaLM | FeatureLlavaLM,
  schedule: VisionSchedule,
  test_set: run.Batch,
  type_names: tuple[str, ...],
  *,
  impl: str,
) -> tuple[float, dict[str, float]]:
  """Exact-match accuracy of the argmax answer word, overall and per type.

  Returns:
    (accuracy, {type name: accuracy}) over the whole `test_set`.
  """
  right = correct(cfg, model, schedule, test_set, impl=impl)
  by_type = summary.type_accuracy(right, test_set["qtype"], type_names)
  return float(right.mean()), by_type


def time_methods(
  cfg: Config,
  models: dict[str, LlavaLM],
  schedules: dict[str, VisionSchedule],
  batch: run.Batch,
  *,
  impl: str,
) -> dict[str, dict[str, timing.Timing]]:
  """Training-step and prefill time of every labelled model, side by side.

  All training steps are timed in one interleaved round-robin, then all
  prefills in another (medians after warm-up), so machine noise hits every
  method alike.

  Args:
    models: label -> trained model.
    schedules: label -> its schedule.
    batch: the `timing_batch` examples every candidate runs on.

  Returns:
    {"train_step": {label: Timing}, "prefill": {label: Timing}}.
  """
  fns = {
    label: run.timing_fns(
      cfg, models[label], schedules[label], batch, impl=impl
    )
    for label in models
  }
  return {
    kind: timing.time_side_by_side(
      {label: fns[label][kind] for label in models},
      warmup=cfg.timing_warmup,
      repeats=cfg.timing_repeats,
    )
    for kind in ("train_step", "prefill")
  }
