"""LYNX's probe: p̂ = P(a forced exit at this cue answers correctly).

Paper: LYNX (Akgül et al., arXiv 2512.05325; spec `llm_exits.md` §2.5).
The official probe is scikit-learn's StandardScaler → MLPClassifier (hidden
256, 64; ReLU; Adam; ≤ 500 epochs; early stopping with patience 10 on a 20 %
validation split) with class-balanced sample weights w_c = n / (2 n_c).
Here the same in JAX: `LynxProbe` holds the standardisation (fitted on the
training split, not trained) and the MLP; `train_probe` trains it with
class-balanced BCE in optax and keeps the epoch with the best validation
loss. The probe's `__call__` is jittable, so the decoding loop calls it on
the hidden states of the cue token.

Axes: n events, F features (the concatenated hidden states of `layers`).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxtyping import ArrayLike, Int, Real

from jaxexit import checks
from jaxexit.typing import Array, Float


class LynxProbe(nnx.Module):
  """Standardise → MLP (hidden sizes, ReLU) → sigmoid.

  Args:
    num_features: F.
    layers: the backbone layers whose hidden states make the features
      (recorded so a probe is never applied to another layer set).
    hidden: MLP widths.
    rngs: initialisation.
  """

  def __init__(
    self,
    num_features: int,
    layers: tuple[int, ...],
    hidden: tuple[int, ...] = (256, 64),
    *,
    rngs: nnx.Rngs,
  ):
    checks.positive_int("num_features", num_features)
    self.num_features, self.layers = num_features, tuple(layers)
    self.mean = nnx.Variable(jnp.zeros((num_features,), jnp.float32))
    self.std = nnx.Variable(jnp.ones((num_features,), jnp.float32))
    widths = (num_features, *hidden, 1)
    self.dense = nnx.List(
      [nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])]
    )

  def check_features(self, layers: tuple[int, ...], width: int) -> None:
    """Raises unless features come from `self.layers` with width F."""
    if tuple(layers) != self.layers or width != self.num_features:
      raise ValueError(
        f"this probe reads layers {self.layers} ({self.num_features} "
        f"features); got features of layers {tuple(layers)} ({width})"
      )

  def logit(self, x: Float[Array, "*b F"]) -> Float[Array, "*b"]:
    shape = (1,) * (x.ndim - 1) + (self.num_features,)
    mean, std = self.mean[...].reshape(shape), self.std[...].reshape(shape)
    z = (x.astype(jnp.float32) - mean) / std
    for i, layer in enumerate(self.dense):
      z = layer(z)
      if i < len(self.dense) - 1:
        z = jax.nn.relu(z)
    return z[..., 0]

  def __call__(self, x: Float[Array, "*b F"]) -> Float[Array, "*b"]:
    """p̂ in (0, 1)."""
    if x.shape[-1] != self.num_features:
      raise ValueError(
        f"probe expects {self.num_features} features (layers "
        f"{self.layers}); got x.shape={tuple(x.shape)}"
      )
    return jax.nn.sigmoid(self.logit(x))


@dataclasses.dataclass(frozen=True)
class ProbeReport:
  """Validation metrics of the kept epoch.

  Attributes:
    val_accuracy: accuracy of p̂ ≥ 0.5 on the validation split.
    val_auc: ROC AUC on the validation split.
    epochs: epochs run (early stopping included).
    best_epoch: the epoch whose parameters were kept.
  """

  val_accuracy: float
  val_auc: float
  epochs: int
  best_epoch: int


def roc_auc(scores, labels) -> float:
  """ROC AUC = P(score of a positive > score of a negative), ties 1/2
  (Mann–Whitney U from average ranks); NaN without both classes."""
  s, y = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
  n_pos, n_neg = int(y.sum()), int((~y).sum())
  if not n_pos or not n_neg:
    return float("nan")
  _, tie, counts = np.unique(s, return_inverse=True, return_counts=True)
  last = np.cumsum(counts)  # 1-based rank of each distinct score's last
  ranks = (last - (counts - 1) / 2.0)[tie]  # average rank over ties
  rank_sum = ranks[y].sum()
  return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _balanced_bce(probe, x, y, w):
  z = probe.logit(x)
  return jnp.sum(w * optax.sigmoid_binary_cross_entropy(z, y)) / jnp.sum(w)


def train_probe(
  features: Real[ArrayLike, "n F"],
  labels: Int[ArrayLike, "n"],
  layers: tuple[int, ...],
  *,
  hidden: tuple[int, ...] = (256, 64),
  val_fraction: float = 0.2,
  max_epochs: int = 500,
  patience: int = 10,
  batch_size: int = 256,
  learning_rate: float = 1e-3,
  seed: int = 0,
) -> tuple[LynxProbe, ProbeReport]:
  """Trains a probe as the official one is trained (see the module doc).

  Raises:
    ValueError: on shape mismatches, labels other than 0/1, or a training
      split without both classes.
  """
  x = np.asarray(features, np.float32)
  y = np.asarray(labels)
  if x.ndim != 2 or y.shape != x.shape[:1]:
    raise ValueError(
      f"features must be [n, F] and labels [n]; got {x.shape}, {y.shape}"
    )
  if not np.isin(y, (0, 1)).all():
    raise ValueError(f"labels must be 0 or 1; got {np.unique(y).tolist()}")
  checks.in_range(
    "val_fraction", val_fraction, 0.0, 1.0, low_open=True, high_open=True
  )
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(x))
  n_val = max(1, int(round(val_fraction * len(x))))
  val, tr = order[:n_val], order[n_val:]
  counts = np.bincount(y[tr], minlength=2)
  if counts.min() == 0:
    raise ValueError(
      f"the training split needs both classes; got counts {counts.tolist()}"
    )
  weights = (len(tr) / (2.0 * counts))[y].astype(np.float32)
  probe = LynxProbe(x.shape[1], layers, hidden, rngs=nnx.Rngs(seed))
  probe.mean[...] = jnp.asarray(x[tr].mean(0))
  probe.std[...] = jnp.asarray(np.maximum(x[tr].std(0), 1e-6))
  opt = nnx.Optimizer(probe, optax.adam(learning_rate), wrt=nnx.Param)

  @nnx.jit
  def step(probe, opt, xb, yb, wb):
    loss, grads = nnx.value_and_grad(_balanced_bce)(probe, xb, yb, wb)
    opt.update(probe, grads)
    return loss

  @nnx.jit
  def val_loss(probe, xb, yb, wb):
    return _balanced_bce(probe, xb, yb, wb)

  yf = y.astype(np.float32)
  xv, yv, wv = (jnp.asarray(a[val]) for a in (x, yf, weights))
  best, best_epoch, best_state, epoch = np.inf, 0, nnx.state(probe), 0
  for epoch in range(1, max_epochs + 1):
    perm = rng.permutation(tr)
    for i in range(0, len(perm), batch_size):
      b = perm[i : i + batch_size]
      step(
        probe,
        opt,
        jnp.asarray(x[b]),
        jnp.asarray(yf[b]),
        jnp.asarray(weights[b]),
      )
    loss = float(val_loss(probe, xv, yv, wv))
    if loss < best - 1e-6:
      best, best_epoch = loss, epoch
      best_state = jax.tree.map(jnp.copy, nnx.state(probe))
    elif epoch - best_epoch >= patience:
      break
  nnx.update(probe, best_state)
  p = np.asarray(probe(jnp.asarray(x[val])))
  report = ProbeReport(
    val_accuracy=float(np.mean((p >= 0.5) == y[val].astype(bool))),
    val_auc=roc_auc(p, y[val]),
    epochs=epoch,
    best_epoch=best_epoch,
  )
  return probe, report
