"""The headline path: a frozen, cached EfficientNet-Lite and what sits on it.

Per seed, two methods are trained on the cached features of the train split
(`vision_common.features.split_features`):

  dyn_perceiver  Dynamic Perceiver's latent branch
                 (`jaxexit.models.dyn_perceiver_frozen.LatentBranch`) on the
                 stage maps and head features, §9.2's loss (weighted CE +
                 self-distillation from y_merge);
  linear_exits   the same frozen CNN with its own exits: linear heads on the
                 pooled stage0, stage1, stage2 maps and on the head
                 features (`MultiExitCNN`'s exits), CE per exit.

Their exits' logits on the validation and test splits come from the same
cache; thresholds are fitted on validation with the budgeted protocol and
applied to test (`vision_common.curves`). FLOPs are XLA's count of the live
model (`FrozenDynPerceiver` / `MultiExitCNN` over the live backbone), per
example, so the two curves share an absolute axis, and `time_points` times
operating points end to end, backbone included.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.cli import shard_rows, to_host
from experiments.dynamic_perceiver.configs import NUM_CLASSES
from experiments.dynamic_perceiver.run import (
  operating_thresholds,
  optimizer,
  with_fixed_and_full,
)
from experiments.vision_common import curves
from jaxexit import execution, exits, train
from jaxexit.data import eval_batches, resize, shuffled_batch_indices
from jaxexit.exits.budgeted import DYN_PERCEIVER_RESCALE, budgeted_exit
from jaxexit.exits.confidence import max_softmax
from jaxexit.models.cnn_stages import NUM_STAGES, MultiExitCNN
from jaxexit.models.dyn_perceiver import EXIT_WEIGHTS, dyn_perceiver_loss
from jaxexit.models.dyn_perceiver_frozen import (
  MAP_NAMES,
  FrozenDynPerceiver,
  LatentBranch,
)
from jaxexit.models.efficientnet_lite import (
  load_efficientnet_lite,
  preprocess,
)

METHODS = ("dyn_perceiver", "linear_exits")
POOLED = ("pooled0", "pooled1", "pooled2", "head")
INPUTS = {"dyn_perceiver": MAP_NAMES + ("head",), "linear_exits": POOLED}


class FeatureStat(nnx.Variable):
  """A fixed statistic of the training features (not trained)."""


class Standardized(nnx.Module):
  """A linear layer on standardized features, (x − mean) / std.

  Pooled and head features of the frozen CNN have large, uneven scales; a
  linear head trains far better on standardized inputs. `folded()` is the
  same affine map as one plain `nnx.Linear` (W / std, b − (mean / std) W),
  so the live model and its FLOPs count hold no extra op.
  """

  def __init__(self, linear: nnx.Linear, mean, std):
    self.linear = linear
    self.mean = FeatureStat(jnp.asarray(mean, jnp.float32))
    self.std = FeatureStat(jnp.asarray(std, jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, F] features -> [B, C] logits."""
    x = jnp.asarray(x, jnp.float32)
    mean, std = self.mean[None], self.std[None]  # [1, F]
    return self.linear((x - mean) / std)

  def folded(self) -> nnx.Linear:
    """The equivalent plain Linear."""
    k, b = self.linear.kernel[...], self.linear.bias[...]
    scale = 1.0 / self.std[...]
    out = nnx.Linear(k.shape[0], k.shape[1], rngs=nnx.Rngs(0))
    out.kernel[...] = k * scale[:, None]
    out.bias[...] = b - (self.mean[...] * scale) @ k  # [C]
    return out


def feature_stats(feats: dict, name: str, rows: int = 10_000) -> tuple:
  """(mean [F], std [F]) of a pooled/head feature over ≤ `rows` evenly
  spaced training examples."""
  x = feats[name]
  idx = np.linspace(0, len(x) - 1, min(rows, len(x))).astype(np.int64)
  x = np.asarray(x[idx], np.float32)
  return x.mean(axis=0), x.std(axis=0) + 1e-3


class LinearExits(nnx.Module):
  """Linear exits on pooled stage0-2 maps and on the head features."""

  def __init__(self, feats: dict, *, rngs: nnx.Rngs):
    self.heads = nnx.List(
      [
        Standardized(
          nnx.Linear(feats[n].shape[1], NUM_CLASSES, rngs=rngs),
          *feature_stats(feats, n),
        )
        for n in POOLED
      ]
    )

  def __call__(self, feats: dict) -> jax.Array:
    """`{"pooled0".."pooled2", "head": [B, C_k]}` -> `[B, 4, classes]`."""
    return jnp.stack(
      [h(feats[n]) for h, n in zip(self.heads, POOLED)], axis=1
    ).astype(jnp.float32)


def _rngs(seed: int) -> nnx.Rngs:
  return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def build(method: str, cfg, feats: dict, seed: int) -> nnx.Module:
  """A fresh trainable part for `method`, sized from the cached features."""
  if method == "dyn_perceiver":
    shapes = [feats[n].shape[1:] for n in MAP_NAMES]
    latent = cfg.latent_config(shapes, feats["head"].shape[1])
    model = LatentBranch(latent, rngs=_rngs(seed))
    model.cnn_head = Standardized(model.cnn_head, *feature_stats(feats, "head"))
    return model
  if method == "linear_exits":
    return LinearExits(feats, rngs=_rngs(seed))
  raise ValueError(f"method={method!r}; expected one of {list(METHODS)}")


def train_method(
  method: str,
  cfg,
  feats: dict,
  labels: np.ndarray,
  seed: int,
  workdir: pathlib.Path,
  progress: bool | None,
  mesh=None,
) -> nnx.Module:
  """Trains one method's part on cached train features (resumable);
  `mesh` (None: one device) is `jaxexit.train.train`'s."""
  model = build(method, cfg, feats, seed)
  weights, kd = (
    (EXIT_WEIGHTS, cfg.kd_weight)
    if method == "dyn_perceiver"
    else ((1.0,) * NUM_STAGES, 0.0)
  )
  names = INPUTS[method]

  def loss_fn(m, batch, rng):
    del rng
    return dyn_perceiver_loss(
      m(batch["x"]),
      batch["labels"],
      weights=weights,
      kd_weight=kd,
      temperature=cfg.temperature,
      label_smoothing=cfg.label_smoothing,
    )

  def batch_fn(step):
    idx = np.sort(
      shuffled_batch_indices(step, len(labels), cfg.batch_size, seed)
    )
    return {
      "x": {n: np.asarray(feats[n][idx]) for n in names},
      "labels": labels[idx],
    }

  tx = optimizer(cfg)
  model, _ = train.train(
    model,
    tx,
    loss_fn,
    batch_fn,
    num_steps=cfg.steps,
    workdir=workdir,
    seed=seed,
    checkpoint_every=cfg.checkpoint_every,
    log_every=50,
    progress=progress,
    fingerprint={"method": method, "config": cfg, "seed": seed},
    mesh=mesh,
  )
  return model


def cached_logits(
  model, method: str, feats: dict, cfg, mesh=None
) -> np.ndarray:
  """[N, 4, classes] float32 logits of every exit from cached features,
  the rows of each batch split over `mesh` (None: one device)."""
  model.eval()
  graphdef, state = nnx.split(model)
  fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
  names, n = INPUTS[method], len(feats[INPUTS[method][0]])
  chunks = []
  for idx, valid in eval_batches(n, cfg.eval_batch_size):
    x = shard_rows({k: np.asarray(feats[k][idx]) for k in names}, mesh)
    chunks.append(to_host(fwd(state, x))[:valid])
  return np.concatenate(chunks)


def live_model(method: str, trained: nnx.Module, cfg, seed: int) -> nnx.Module:
  """The live backbone + a copy of a trained part (standardized heads
  folded into plain Linears), as a model with `exit_stack()`."""
  cnn = load_efficientnet_lite(cfg.variant, num_classes=NUM_CLASSES)
  cnn.eval()
  trained = nnx.clone(trained)
  if method == "dyn_perceiver":
    trained.cnn_head = trained.cnn_head.folded()
    return FrozenDynPerceiver(cnn, trained)
  model = MultiExitCNN(cnn, NUM_CLASSES, cfg.resolution, rngs=_rngs(seed))
  for k in range(NUM_STAGES - 1):
    model.exits[k] = trained.heads[k].folded()
  model.cnn.fc = trained.heads[NUM_STAGES - 1].folded()
  return model


def live_inputs(images: np.ndarray, cfg) -> jax.Array:
  """uint8 [B, 32, 32, 3] -> the backbone's input at cfg.resolution."""
  return preprocess(resize(jnp.asarray(images), cfg.resolution))


def evaluate(method, cfg, logits: dict, labels: dict, costs, full) -> list:
  """Budgeted, fixed-exit and full-model records of one seed's model."""
  rescale = DYN_PERCEIVER_RESCALE if method == "dyn_perceiver" else None
  records = curves.budget_curve(
    method,
    logits["val"],
    labels["val"],
    logits["test"],
    labels["test"],
    costs,
    full,
    cfg.r_values,
    rescale=rescale,
  )
  return with_fixed_and_full(
    records, method, logits["test"], labels["test"], costs, full
  )


def timing_targets(records: list[dict], method: str, count: int) -> list:
  """`count` budgeted records of `method` evenly spaced in FLOPs, + full."""
  budget = sorted(
    (
      r
      for r in records
      if r["method"] == method and not isinstance(r["budget_or_threshold"], str)
    ),
    key=lambda r: r["avg_flops"],
  )
  picks = (
    np.linspace(0, len(budget) - 1, count + 2)[1:-1]
    if count > 1
    else [(len(budget) - 1) / 2]
  )
  chosen = [budget[int(round(i))] for i in picks]
  full = [
    r
    for r in records
    if r["method"] == "full" and r["budget_or_threshold"] == method
  ]
  return list({id(r): r for r in chosen + full}.values())


def time_points(
  targets: list[dict],
  model,
  test_images: np.ndarray,
  test_logits: np.ndarray,
  costs: np.ndarray,
  full: float,
  cfg,
) -> list[dict]:
  """Rows of the timing table: realised vs FLOPs speed-up, in one run.

  `compacted` at batch cfg.timing_batch and `early_stop` at batch 1, each
  against the full model of the same stack (interleaved medians).
  """
  stack, params = model.exit_stack()
  rule = exits.thresholds_input_rule()
  n_big = cfg.timing_batch * cfg.timing_batches
  big = [
    model.init_carry(live_inputs(test_images[i : i + cfg.timing_batch], cfg))
    for i in range(0, n_big, cfg.timing_batch)
  ]
  one = [
    model.init_carry(live_inputs(test_images[i : i + 1], cfg))
    for i in range(cfg.batch1_examples)
  ]
  conf = np.asarray(max_softmax(jnp.asarray(test_logits)))
  rows = []
  for rec in targets:
    t = operating_thresholds(rec)
    flops_speedup = lambda n: (
      full / float(costs[budgeted_exit(conf[:n], t)].mean())
    )
    fast = execution.measure_speedup(
      stack,
      rule,
      params,
      big,
      mode="compacted",
      rule_inputs=[jnp.asarray(t)] * len(big),
      repeats=cfg.timing_repeats,
      buckets=tuple(b for b in cfg.buckets if b < cfg.timing_batch),
    )
    single = execution.measure_speedup(
      stack,
      rule,
      params,
      one,
      mode="early_stop",
      rule_inputs=[jnp.asarray(t)] * len(one),
      repeats=cfg.timing_repeats,
    )
    f_big, f_one = flops_speedup(n_big), flops_speedup(len(one))
    rows.append(
      {
        "method": rec["method"],
        "budget_or_threshold": rec["budget_or_threshold"],
        "model": rec["model"],
        "full_ms_b256": 1e3 * fast.full_seconds / len(big),
        "compacted_ms_b256": 1e3 * fast.mode_seconds / len(big),
        "flops_speedup_b256": f_big,
        "realised_speedup": fast.realised_speedup,
        "ratio": fast.realised_speedup / f_big,
        "full_ms_b1": 1e3 * single.full_seconds / len(one),
        "early_stop_ms_b1": 1e3 * single.mode_seconds / len(one),
        "flops_speedup_b1": f_one,
        "realised_speedup_batch1": single.realised_speedup,
        "ratio_batch1": single.realised_speedup / f_one,
      }
    )
  return rows
