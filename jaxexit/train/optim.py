"""Optax optimizers and learning-rate schedules built from a frozen config.

`build_optimizer(cfg)` gives `clip_by_global_norm` (if `grad_clip`) followed by
the base optimizer driven by `build_schedule(cfg)`. Parameter groups give some
parameters their own optimizer config, chosen by a predicate on the parameter
path: PALBERT trains its halting ("lambda") layer with its own learning rate,
`ParamGroup("exit", path_contains("exit"), OptimConfig(...))`. Clipping stays
global across groups (one norm over all gradients).

Schedules: every schedule starts with `warmup_steps` of linear warmup from 0
(0 steps allowed), then
  constant       stays at `learning_rate`;
  linear         decays linearly to `end_lr` at `total_steps`;
  cosine         decays by a half cosine to `end_lr` at `total_steps`;
  warmup_cosine  is cosine with `warmup_steps >= 1` required.
"""

import dataclasses
from collections.abc import Callable, Sequence

import jax
import optax

from jaxexit import checks

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "linear")
DEFAULT_GROUP = "default"


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig:
  """Optimizer and schedule hyperparameters (unused fields are ignored).

  Attributes:
    name: "adamw", "adam" or "sgd".
    learning_rate: peak learning rate (> 0).
    weight_decay: decoupled weight decay (adamw; added decay for sgd).
    b1, b2, eps: Adam moments and epsilon.
    momentum: SGD momentum in [0, 1); 0 means plain SGD.
    schedule: one of `SCHEDULES`.
    warmup_steps: linear warmup steps from 0 to `learning_rate`.
    total_steps: steps over which decaying schedules reach `end_lr`.
    end_lr: final learning rate of decaying schedules.
    grad_clip: max global gradient norm, or None for no clipping.
  """

  name: str = "adamw"
  learning_rate: float = 1e-3
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  momentum: float = 0.0
  schedule: str = "constant"
  warmup_steps: int = 0
  total_steps: int | None = None
  end_lr: float = 0.0
  grad_clip: float | None = None

  def __post_init__(self):
    checks.one_of("OptimConfig.name", self.name, OPTIMIZERS)
    checks.one_of("OptimConfig.schedule", self.schedule, SCHEDULES)
    _in("learning_rate", self.learning_rate, 0, float("inf"), low_open=True)
    _in("weight_decay", self.weight_decay, 0, float("inf"))
    _in("b1", self.b1, 0, 1, high_open=True)
    _in("b2", self.b2, 0, 1, high_open=True)
    _in("eps", self.eps, 0, float("inf"), low_open=True)
    _in("momentum", self.momentum, 0, 1, high_open=True)
    _in("end_lr", self.end_lr, 0, float("inf"))
    checks.positive_int(
      "OptimConfig.warmup_steps", self.warmup_steps, minimum=0
    )
    if self.grad_clip is not None:
      _in("grad_clip", self.grad_clip, 0, float("inf"), low_open=True)
    if self.name == "adam" and self.weight_decay:
      raise ValueError(
        f"OptimConfig.weight_decay={self.weight_decay!r} needs "
        "name='adamw' (or 'sgd'); 'adam' has no weight decay"
      )
    self._check_steps()

  def _check_steps(self):
    if self.schedule == "warmup_cosine" and self.warmup_steps < 1:
      raise ValueError(
        "OptimConfig.warmup_steps must be >= 1 for "
        f"schedule='warmup_cosine'; got {self.warmup_steps!r}"
      )
    if self.schedule == "constant":
      return
    checks.positive_int("OptimConfig.total_steps", self.total_steps)
    if self.total_steps <= self.warmup_steps:
      raise ValueError(
        f"OptimConfig.total_steps={self.total_steps} must exceed "
        f"warmup_steps={self.warmup_steps} for schedule={self.schedule!r}"
      )


def _in(field: str, value, low, high, **kw) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(
      f"OptimConfig.{field} must be a number; got OptimConfig.{field}={value!r}"
    )
  checks.in_range(f"OptimConfig.{field}", value, low, high, **kw)


def build_schedule(cfg: OptimConfig) -> optax.Schedule:
  """Returns the learning rate as a function of the step (see module doc).

  Args:
    cfg: the optimizer config.

  Returns:
    An `optax.Schedule`: int step -> float learning rate.
  """
  lr, warm = cfg.learning_rate, cfg.warmup_steps
  if cfg.schedule == "constant":
    decay = optax.constant_schedule(lr)
  elif cfg.schedule == "linear":
    decay = optax.linear_schedule(lr, cfg.end_lr, cfg.total_steps - warm)
  else:  # cosine, warmup_cosine
    decay = optax.cosine_decay_schedule(
      lr, cfg.total_steps - warm, alpha=cfg.end_lr / lr
    )
  if warm == 0:
    return decay
  return optax.join_schedules(
    [optax.linear_schedule(0.0, lr, warm), decay], boundaries=[warm]
  )


def _base(cfg: OptimConfig) -> optax.GradientTransformation:
  """The optimizer of one group, without clipping."""
  lr = build_schedule(cfg)
  if cfg.name == "adamw":
    return optax.adamw(
      lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay
    )
  if cfg.name == "adam":
    return optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  sgd = optax.sgd(lr, momentum=cfg.momentum or None)
  if cfg.weight_decay:
    return optax.chain(optax.add_decayed_weights(cfg.weight_decay), sgd)
  return sgd


@dataclasses.dataclass(frozen=True, kw_only=True)
class ParamGroup:
  """Parameters whose path matches `predicate` use `config`.

  Attributes:
    name: the group label (not "default").
    predicate: takes the parameter path joined by "/" (e.g.
      "encoder/exit_gate/kernel") and says whether it is in the group.
    config: the group's optimizer config; `grad_clip` must be None (clipping
      is global, set it on the default config).
  """

  name: str
  predicate: Callable[[str], bool]
  config: OptimConfig

  def __post_init__(self):
    if self.name == DEFAULT_GROUP or not self.name:
      raise ValueError(f"ParamGroup.name={self.name!r} is reserved or empty")
    if self.config.grad_clip is not None:
      raise ValueError(
        f"ParamGroup {self.name!r}: config.grad_clip="
        f"{self.config.grad_clip!r} must be None; clipping is global, "
        "set grad_clip on the default config"
      )


def path_contains(substring: str) -> Callable[[str], bool]:
  """Returns a predicate true for paths that contain `substring`."""
  return lambda path: substring in path


def param_path(key_path) -> str:
  """Joins a jax key path into "a/b/0/c", dropping NNX's `.value` leaf."""
  parts = []
  for k in key_path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
  if parts and parts[-1] == "value":
    parts.pop()
  return "/".join(parts)


def label_params(params, groups: Sequence[ParamGroup]):
  """Labels each parameter leaf with its first matching group's name.

  Args:
    params: the parameter pytree (e.g. `nnx.state(model, nnx.Param)`).
    groups: the groups, tried in order.

  Returns:
    A pytree like `params` whose leaves are group names ("default" if none
    matches).
  """

  def label(key_path, _):
    path = param_path(key_path)
    for g in groups:
      if g.predicate(path):
        return g.name
    return DEFAULT_GROUP

  return jax.tree_util.tree_map_with_path(label, params)


def build_optimizer(
  cfg: OptimConfig, groups: Sequence[ParamGroup] = ()
) -> optax.GradientTransformation:
  """Builds the optimizer: global clipping, then per-group optimizers.

  Args:
    cfg: the default config (and the global `grad_clip`).
    groups: optional parameter groups with their own configs.

  Returns:
    An `optax.GradientTransformation`.
  """
  names = [g.name for g in groups]
  if len(set(names)) != len(names):
    raise ValueError(f"ParamGroup names must be unique; got {names}")
  if groups:
    transforms = {DEFAULT_GROUP: _base(cfg)}
    transforms.update({g.name: _base(g.config) for g in groups})
    tx = optax.multi_transform(
      transforms, lambda params: label_params(params, groups)
    )
  else:
    tx = _base(cfg)
  if cfg.grad_clip is None:
    return tx
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)


def train_only(
  tx: optax.GradientTransformation, predicate: Callable[[str], bool]
) -> optax.GradientTransformation:
  """Applies `tx` to parameters whose path matches `predicate`, freezes others.

  Frozen parameters get a zero update (not a zero gradient fed to Adam),
  so neither momentum nor weight decay moves them (DeeBERT's second stage).
  """

  def labels(params):
    return jax.tree_util.tree_map_with_path(
      lambda kp, _: "train" if predicate(param_path(kp)) else "frozen", params
    )

  return optax.multi_transform(
    {"train": tx, "frozen": optax.set_to_zero()}, labels
  )
