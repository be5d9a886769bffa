"""Train Dynamic Perceiver and the multi-exit CNN, then score their exits.

Both models share one feature branch architecture (and initial weights).
Each is trained with the shared resumable loop, its four exits' logits are
computed on the held-out validation split and the test split in `simulate`,
thresholds are fitted on validation with the MSDNet budgeted protocol and
applied to test (`vision_common.curves`), and every record's operating
point is timed against the full model of the same `ExitStack`.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.cli import shard_rows, to_host
from experiments.dynamic_perceiver.configs import FEATURE_BRANCHES, NUM_CLASSES
from experiments.vision_common import curves
from experiments.vision_common.splits import Splits
from jaxexit import checks, execution, exits, train
from jaxexit.data import (
  ImageSplit,
  eval_batches,
  normalize,
  random_crop_flip,
  resize,
  shuffled_batch_indices,
)
from jaxexit.exits.budgeted import DYN_PERCEIVER_RESCALE
from jaxexit.models.cnn_stages import NUM_STAGES, MultiExitCNN, StagedCNN
from jaxexit.models.dyn_perceiver import (
  EXIT_WEIGHTS,
  DynPerceiver,
  dyn_perceiver_loss,
)

METHODS = ("dyn_perceiver", "multi_exit_cnn")


def with_fixed_and_full(records, method, test_logits, labels, costs, full):
  """`records` plus each fixed exit and the full model, all tagged with
  "model" = `method`. The full model runs every stage but evaluates only
  its last head, so it costs `full`, not the last exit's cumulative cost."""
  fixed = curves.fixed_exit_records(method, test_logits, labels, costs, full)
  whole = dict(
    fixed[-1],
    method="full",
    budget_or_threshold=method,
    avg_flops=full,
    flops_fraction=1.0,
  )
  return [dict(rec, model=method) for rec in records + fixed + [whole]]


def optimizer(cfg):
  """AdamW with linear warm-up then cosine decay, from `cfg`'s fields."""
  return train.build_optimizer(
    train.OptimConfig(
      name="adamw",
      learning_rate=cfg.learning_rate,
      weight_decay=cfg.weight_decay,
      schedule="warmup_cosine",
      warmup_steps=cfg.warmup_steps,
      total_steps=cfg.steps,
      end_lr=cfg.end_lr,
    )
  )


def _rngs(seed: int) -> nnx.Rngs:
  # RBG keys: random init compiles one program per kernel shape, and those
  # of threefry keys take several times longer to compile on CPU.
  return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def feature_branch(cfg) -> nnx.Module:
  """A fresh feature branch: `StagedCNN` or pretrained EfficientNet-Lite0."""
  checks.one_of("feature_branch", cfg.feature_branch, FEATURE_BRANCHES)
  if cfg.feature_branch == "cnn":
    return StagedCNN(cfg.cnn_config(), rngs=_rngs(cfg.seed))
  # pylint: disable-next=import-outside-toplevel
  from jaxexit.models.efficientnet_lite import load_efficientnet_lite

  branch = load_efficientnet_lite(
    "lite0", num_classes=NUM_CLASSES, rngs=_rngs(cfg.seed)
  )
  branch.train()
  return branch


def build_model(method: str, cfg) -> nnx.Module:
  """Dynamic Perceiver or the multi-exit CNN over a fresh feature branch."""
  checks.one_of("method", method, METHODS)
  if method == "dyn_perceiver":
    return DynPerceiver(
      cfg.perceiver_config(), feature_branch(cfg), rngs=_rngs(cfg.seed + 1)
    )
  return MultiExitCNN(
    feature_branch(cfg), NUM_CLASSES, cfg.image_size, rngs=_rngs(cfg.seed + 1)
  )


def model_inputs(images, cfg) -> jax.Array:
  """uint8 [B, 32, 32, 3] -> the branch's float input at cfg.image_size."""
  images = jnp.asarray(images)
  if cfg.image_size != images.shape[1]:
    images = resize(images, cfg.image_size)
  if cfg.feature_branch == "efficientnet_lite0":
    # pylint: disable-next=import-outside-toplevel
    from jaxexit.models.efficientnet_lite import preprocess

    return preprocess(images)
  return normalize(images)


def loss_weights(method: str, cfg) -> tuple[tuple[float, ...], float]:
  """(CE weights per exit, α_kd): §9.2 for DP; a plain sum for the CNN."""
  if method == "dyn_perceiver":
    return EXIT_WEIGHTS, cfg.kd_weight
  return (1.0,) * NUM_STAGES, cfg.kd_weight if cfg.baseline_kd else 0.0


def train_model(
  method: str,
  cfg,
  data: ImageSplit,
  workdir: pathlib.Path,
  progress: bool | None,
  mesh=None,
) -> nnx.Module:
  """Trains one model (resumable from `workdir`); `mesh` (None: one
  device) is `jaxexit.train.train`'s."""
  model = build_model(method, cfg)
  weights, kd_weight = loss_weights(method, cfg)

  def loss_fn(m, batch, rng):
    images = random_crop_flip(rng, batch["images"], padding=cfg.crop_padding)
    logits = m(model_inputs(images, cfg))
    return dyn_perceiver_loss(
      logits,
      batch["labels"],
      weights=weights,
      kd_weight=kd_weight,
      temperature=cfg.temperature,
      label_smoothing=cfg.label_smoothing,
    )

  def batch_fn(step):
    idx = shuffled_batch_indices(step, len(data), cfg.batch_size, cfg.seed)
    return {"images": data.images[idx], "labels": data.labels[idx]}

  tx = optimizer(cfg)
  model, _ = train.train(
    model,
    tx,
    loss_fn,
    batch_fn,
    num_steps=cfg.steps,
    workdir=workdir,
    seed=cfg.seed,
    checkpoint_every=cfg.checkpoint_every,
    log_every=10,
    progress=progress,
    mesh=mesh,
  )
  return model


def per_exit_logits(
  model, runner, params, split: ImageSplit, cfg, mesh=None
) -> np.ndarray:
  """[N, 4, C] float32 logits of every exit (a `simulate` runner's pass),
  the rows of each batch split over `mesh` (None: one device)."""
  chunks = []
  for idx, num_valid in eval_batches(len(split), cfg.eval_batch_size):
    images = shard_rows(split.images[idx], mesh)
    carry = model.init_carry(model_inputs(images, cfg))
    logits = runner(params, carry).per_layer.logits
    chunks.append(to_host(logits)[:num_valid])
  return np.concatenate(chunks)


def operating_thresholds(record: dict) -> np.ndarray:
  """[L] thresholds that reproduce a record's exit rule."""
  key = record["budget_or_threshold"]
  if "thresholds" in record:
    return np.asarray(record["thresholds"], np.float32)
  k = NUM_STAGES - 1 if record["method"] == "full" else int(key[4:])
  t = np.full((NUM_STAGES,), np.inf, np.float32)
  t[k] = -np.inf
  return t


def time_records(
  records: list[dict], model, stack, params, test: ImageSplit, cfg
) -> None:
  """Adds realised speed-ups vs the full model of the same stack, in place.

  "realised_speedup": `compacted` at `cfg.eval_batch_size`;
  "realised_speedup_batch1": `early_stop` at batch 1.
  """
  rule = exits.thresholds_input_rule()
  big = [
    model.init_carry(model_inputs(test.images[idx], cfg))
    for idx, _ in eval_batches(len(test), cfg.eval_batch_size)[
      : cfg.timing_batches
    ]
  ]
  one = [
    model.init_carry(model_inputs(test.images[i : i + 1], cfg))
    for i in range(min(cfg.batch1_examples, len(test)))
  ]
  buckets = tuple(b for b in cfg.buckets if b < cfg.eval_batch_size)
  for rec in records:
    t = jnp.asarray(operating_thresholds(rec))
    fast = execution.measure_speedup(
      stack,
      rule,
      params,
      big,
      mode="compacted",
      rule_inputs=[t] * len(big),
      repeats=cfg.timing_repeats,
      buckets=buckets,
    )
    single = execution.measure_speedup(
      stack,
      rule,
      params,
      one,
      mode="early_stop",
      rule_inputs=[t] * len(one),
      repeats=cfg.timing_repeats,
    )
    rec.update(
      realised_speedup=round(fast.realised_speedup, 3),
      realised_speedup_batch1=round(single.realised_speedup, 3),
      timing_theoretical_speedup=round(fast.theoretical_speedup, 3),
    )


def evaluate(
  method: str, model, splits: Splits, cfg, mesh=None
) -> tuple[list, dict]:
  """(records, per-exit summary) of one trained model; `mesh` splits the
  evaluation batches' rows (None: one device)."""
  stack, params = model.exit_stack()
  runner = execution.make_runner("simulate", stack, exits.never())
  val = per_exit_logits(model, runner, params, splits.val, cfg, mesh)
  test = per_exit_logits(model, runner, params, splits.test, cfg, mesh)
  probe = model.init_carry(model_inputs(splits.test.images[:8], cfg))
  flops = execution.exit_flops(stack, params, probe)
  costs, full = flops.cumulative, flops.full
  rescale = DYN_PERCEIVER_RESCALE if method == "dyn_perceiver" else None
  records = curves.budget_curve(
    method,
    val,
    splits.val.labels,
    test,
    splits.test.labels,
    costs,
    full,
    cfg.r_values,
    rescale=rescale,
  )
  num_budget = len(records)
  records = with_fixed_and_full(
    records, method, test, splits.test.labels, costs, full
  )
  fixed = records[num_budget:-1]  # one per exit; the full model is last
  time_records(records, model, stack, params, splits.test, cfg)
  summary = {
    "model": method,
    "exit_flops": costs.tolist(),
    "full_flops": full,
    "exit_accuracy": [r["accuracy"] for r in fixed],
  }
  return records, summary
