"""JEI-DNN training on cached features: IM warm-up, then GATE/CLASSIFIER.

Paper: Regol, Chataoui, Coates, ICLR 2024; spec `encoder_exits.md` §8.4.
The heads and losses are `jaxexit.methods.jei_dnn`. The schedule:

  warm-up      `warmup_loss` on the IMs (gates untouched)        (§8.4.1)
  alternation  every `alternate_every` steps, GATE first:         (§8.4.2)
               GATE: `gate_loss` on the gates, targets from the oracle
               exit under γ, pos-weights from validation oracle counts;
               CLASSIFIER: `classifier_loss` on the IMs, P from the gates.

Both use SGD with momentum 0.9 and weight decay added to the gradient
(torch's `SGD(weight_decay=)`), and one cosine learning rate over the phase
(§8.4.3). The backbone is frozen, so every step reads `CachedFeatures`
(exact, and cheap enough to train one set of gates per γ).

Axes: B batch, N examples, G gates, L = G + 1 exits, D width, C classes.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxtyping import ArrayLike, Real

from jaxexit import checks
from jaxexit.data.batching import shuffled_batch_indices
from jaxexit.exits.gates import jei_exit_probabilities, jei_gate_targets
from jaxexit.methods.jei_dnn import (
  POS_WEIGHT_COUNTS,
  CachedFeatures,
  JeiHeads,
  classifier_loss,
  gate_loss,
  gate_pos_weight,
  oracle_exit,
  warmup_loss,
)
from jaxexit.train.progress import ProgressBar
from jaxexit.typing import Array, Float

ScalarLike = Real[ArrayLike, ""]


@dataclasses.dataclass(frozen=True, kw_only=True)
class JeiTrainConfig:
  """JEI-DNN training schedule (§8.4; the paper counts epochs of batch 64).

  Attributes:
    batch_size: examples per step (paper 64).
    warmup_steps: most IM warm-up steps (the paper: ≤ 3 epochs).
    warmup_eval_every: with validation data, steps between the per-IM
      early-stopping checks (the paper checks once per epoch).
    warmup_patience: checks without a better validation accuracy after
      which an IM stops and its best weights are restored (paper 2).
    steps: steps of the alternating GATE/CLASSIFIER phase.
    alternate_every: steps per phase before switching (paper 200).
    learning_rate: peak SGD learning rate (paper 0.01).
    end_lr: cosine floor (paper 2e-4).
    weight_decay: L2 added to the gradient (paper 5e-4).
    momentum: SGD momentum (paper 0.9).
    pos_weight_counts: how the gates' positive-class weights count
      examples (`jei_dnn.gate_pos_weight`): "exact" as the paper's code,
      "cumulative" the gate's own positives.
    seed: batch order.
  """

  batch_size: int = 64
  warmup_steps: int = 2000
  warmup_eval_every: int = 500
  warmup_patience: int = 2
  steps: int = 10000
  alternate_every: int = 200
  learning_rate: float = 0.01
  end_lr: float = 2e-4
  weight_decay: float = 5e-4
  momentum: float = 0.9
  pos_weight_counts: str = "exact"
  seed: int = 322

  def __post_init__(self):
    for name in (
      "batch_size",
      "warmup_steps",
      "warmup_eval_every",
      "warmup_patience",
      "steps",
      "alternate_every",
    ):
      checks.positive_int(f"JeiTrainConfig.{name}", getattr(self, name))
    checks.in_range(
      "JeiTrainConfig.learning_rate",
      self.learning_rate,
      0.0,
      np.inf,
      low_open=True,
    )
    checks.in_range(
      "JeiTrainConfig.end_lr", self.end_lr, 0.0, self.learning_rate
    )
    checks.in_range(
      "JeiTrainConfig.weight_decay", self.weight_decay, 0.0, np.inf
    )
    checks.in_range(
      "JeiTrainConfig.momentum", self.momentum, 0.0, 1.0, high_open=True
    )
    checks.positive_int("JeiTrainConfig.seed", self.seed, minimum=0)
    checks.one_of(
      "JeiTrainConfig.pos_weight_counts",
      self.pos_weight_counts,
      POS_WEIGHT_COUNTS,
    )


def _cosine(cfg: JeiTrainConfig, total: int) -> optax.Schedule:
  return optax.cosine_decay_schedule(
    cfg.learning_rate, total, alpha=cfg.end_lr / cfg.learning_rate
  )


def _sgd(params, trace, grads, lr, cfg: JeiTrainConfig):
  """torch SGD: d = g + wd·p; v = μ·v + d; p -= lr·v."""
  d = jax.tree.map(lambda g, p: g + cfg.weight_decay * p, grads, params)
  trace = jax.tree.map(lambda v, x: cfg.momentum * v + x, trace, d)
  return jax.tree.map(lambda p, v: p - lr * v, params, trace), trace


def _part_loss(graphdef, state, part, loss_of):
  """`loss_of(heads)` as a function of `state[part]` alone."""

  def loss(sub):
    return loss_of(nnx.merge(graphdef, nnx.State({**state, part: sub})))

  return loss


@functools.partial(
  jax.jit, static_argnames=("graphdef", "part", "kind", "cfg", "total")
)
def _step(
  graphdef,
  state,
  trace,
  batch,
  step,
  extra,
  active=None,
  *,
  part,
  kind,
  cfg,
  total,
):
  """One SGD step on `state[part]`; returns (state, trace, loss).

  `active` ([G] bool, optional): only those stacked modules move.
  """
  feats, final, labels = batch

  def loss_of(heads):
    im = heads.im_logits(feats)
    if kind == "warmup":
      return warmup_loss(im, final, labels)
    if kind == "gate":
      costs, gamma, pos_weight = extra
      targets = jei_gate_targets(
        oracle_exit(im, final, labels, costs, gamma), heads.num_gates
      )
      return gate_loss(heads.gate_logits(im), targets, pos_weight)
    probs, _ = jei_exit_probabilities(jax.nn.sigmoid(heads.gate_logits(im)))
    return classifier_loss(im, labels, probs)

  loss, grads = jax.value_and_grad(_part_loss(graphdef, state, part, loss_of))(
    state[part]
  )
  lr = _cosine(cfg, total)(step)
  new, trace = _sgd(state[part], trace, grads, lr, cfg)
  if active is not None:
    new = _where_active(active, new, state[part])
  return nnx.State({**state, part: new}), trace, loss


def _where_active(active, new, old):
  """`new` for the active stacked modules (leading axis G), else `old`."""

  def pick(n, o):
    mask = active.reshape((-1,) + (1,) * (n.ndim - 1))
    return jnp.where(mask, n, o)

  return jax.tree.map(pick, new, old)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _im_val_accuracy(graphdef, state, val):
  """[G] validation accuracy of every IM."""
  feats, _, labels = val
  im = nnx.merge(graphdef, state).im_logits(feats)
  return jnp.mean(jnp.argmax(im, -1) == labels[:, None], axis=0)


@functools.partial(jax.jit, static_argnames=("graphdef", "counts"))
def _val_pos_weight(graphdef, state, val, costs, gamma, counts):
  heads = nnx.merge(graphdef, state)
  feats, final, labels = val
  oracle = oracle_exit(heads.im_logits(feats), final, labels, costs, gamma)
  return gate_pos_weight(oracle, heads.num_gates, counts)


def _batch(data, step: int, cfg: JeiTrainConfig, salt: int):
  """The step's batch: shuffled epochs, drop-last (`shuffled_batch_indices`)."""
  idx = shuffled_batch_indices(
    step, data[2].shape[0], cfg.batch_size, cfg.seed + salt
  )
  idx = jnp.asarray(idx, jnp.int32)
  return tuple(x[idx] for x in data)


def _device(data: CachedFeatures):
  return (
    jnp.asarray(data.features, jnp.float32),
    jnp.asarray(data.final_logits, jnp.float32),
    jnp.asarray(data.labels, jnp.int32),
  )


def warm_up(
  heads: JeiHeads,
  train: CachedFeatures,
  cfg: JeiTrainConfig,
  *,
  val: CachedFeatures | None = None,
  progress: bool | None = None,
) -> JeiHeads:
  """Trains the IMs with `warmup_loss` (gates untouched); returns new heads.

  With `val`, every `cfg.warmup_eval_every` steps each IM's validation
  accuracy is checked; an IM that has not improved for
  `cfg.warmup_patience` checks stops (its updates are masked), and every
  IM ends with its best checked weights (§8.4.1's per-IM early stopping).
  Without `val` every IM trains for `cfg.warmup_steps`.

  Args:
    heads: initial heads (not modified).
    train: cached training features.
    cfg: the schedule (`warmup_*`, batch size, SGD settings).
    val: cached validation features for early stopping, or None.
    progress: progress bar (None: only on a terminal).
  """
  graphdef, state = nnx.split(heads)
  data = _device(train)
  val_data = None if val is None else _device(val)
  trace = jax.tree.map(jnp.zeros_like, state["ims"])
  active = jnp.ones((heads.num_gates,), bool)
  best_acc = jnp.full((heads.num_gates,), -1.0)
  best, waited = state["ims"], jnp.zeros((heads.num_gates,), jnp.int32)
  with ProgressBar(
    cfg.warmup_steps, enabled=progress, desc="JEI warm-up"
  ) as bar:
    for s in range(cfg.warmup_steps):
      state, trace, loss = _step(
        graphdef,
        state,
        trace,
        _batch(data, s, cfg, 0),
        s,
        None,
        active if val is not None else None,
        part="ims",
        kind="warmup",
        cfg=cfg,
        total=cfg.warmup_steps,
      )
      bar.update(1, {"loss": loss} if s % 50 == 0 else None)
      last = s + 1 == cfg.warmup_steps
      if val is not None and ((s + 1) % cfg.warmup_eval_every == 0 or last):
        acc = _im_val_accuracy(graphdef, state, val_data)
        better = active & (acc > best_acc)
        best = _where_active(better, state["ims"], best)
        best_acc = jnp.where(better, acc, best_acc)
        waited = jnp.where(better, 0, waited + active)
        active = active & (waited < cfg.warmup_patience)
        if not bool(jnp.any(active)):
          break
  if val is not None:
    state = nnx.State({**state, "ims": best})
  return nnx.merge(graphdef, state)


def train_gated(
  heads: JeiHeads,
  train: CachedFeatures,
  val: CachedFeatures,
  costs: Float[Array, "L"],
  gamma: ScalarLike,
  cfg: JeiTrainConfig,
  *,
  progress: bool | None = None,
) -> JeiHeads:
  """The alternating GATE / CLASSIFIER phase for one γ (§8.4.2).

  Each GATE phase starts by recomputing the positive-class weights from
  the oracle exits of `val` under the current IMs (the paper recomputes
  them from validation every epoch; IMs do not move during a GATE phase).
  IMs and gates keep separate momentum buffers across phases.

  Args:
    heads: warmed-up heads (not modified).
    train: cached training features.
    val: cached validation features (pos-weights only).
    costs: [L] normalised exit costs (`exit_costs`).
    gamma: γ ≥ 0, the accuracy/cost trade-off.
    cfg: the schedule.
    progress: progress bar (None: only on a terminal).

  Returns:
    The trained heads.
  """
  checks.in_range("gamma", gamma, 0.0, np.inf, high_open=True)
  if jnp.shape(costs) != (heads.num_gates + 1,):
    raise ValueError(
      f"costs must be [L] with L = num_gates + 1 = "
      f"{heads.num_gates + 1}; got shape {jnp.shape(costs)}"
    )
  graphdef, state = nnx.split(heads)
  data, val_data = _device(train), _device(val)
  costs, gamma = jnp.asarray(costs, jnp.float32), jnp.float32(gamma)
  traces = {p: jax.tree.map(jnp.zeros_like, state[p]) for p in ("ims", "gates")}
  pos_weight = None
  with ProgressBar(
    cfg.steps, enabled=progress, desc=f"JEI γ={float(gamma):g}"
  ) as bar:
    for s in range(cfg.steps):
      gate_phase = (s // cfg.alternate_every) % 2 == 0
      if gate_phase and s % cfg.alternate_every == 0:
        pos_weight = _val_pos_weight(
          graphdef, state, val_data, costs, gamma, cfg.pos_weight_counts
        )
      part = "gates" if gate_phase else "ims"
      state, traces[part], loss = _step(
        graphdef,
        state,
        traces[part],
        _batch(data, s, cfg, 1),
        s,
        (costs, gamma, pos_weight) if gate_phase else None,
        part=part,
        kind="gate" if gate_phase else "classifier",
        cfg=cfg,
        total=cfg.steps,
      )
      bar.update(1, {"loss": loss} if s % 50 == 0 else None)
  return nnx.merge(graphdef, state)
