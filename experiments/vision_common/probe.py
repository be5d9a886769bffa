"""Standardised linear classifiers on frozen features (linear probes).

A frozen ImageNet backbone has no CIFAR-10 classifier; the vision
experiments fit one on its pooled features, as the papers fine-tune their
backbone's head on the target set. The features are standardised with the
training split's mean and standard deviation (an affine change that a
linear layer absorbs, so the model class is unchanged; it only conditions
the optimisation).

Axes: N examples, D features, C classes.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxexit.data.batching import shuffled_batch_indices

_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class Standardizer:
  """x -> (x - mean) / std, statistics of one training split.

  Attributes:
    mean: [D] float32.
    std: [D] float32 (floored at 1e-6).
  """

  mean: np.ndarray
  std: np.ndarray

  @classmethod
  def fit(cls, x: np.ndarray, chunk: int = 8192) -> "Standardizer":
    """Statistics of `x` [N, D] (read in chunks, so memmaps stay on disk)."""
    n, total, sq = len(x), 0.0, 0.0
    for i in range(0, n, chunk):
      part = np.asarray(x[i : i + chunk], np.float64)
      total = total + part.sum(0)
      sq = sq + (part**2).sum(0)
    mean = total / n
    std = np.sqrt(np.maximum(sq / n - mean**2, 0.0))
    return cls(
      mean.astype(np.float32), np.maximum(std, _EPS).astype(np.float32)
    )

  def __call__(self, x) -> np.ndarray:
    """[N, D] -> standardised float32 [N, D]."""
    return (np.asarray(x, np.float32) - self.mean) / self.std


@dataclasses.dataclass(frozen=True)
class LinearProbe:
  """A standardised linear classifier.

  Attributes:
    standardizer: the input standardisation.
    kernel: [D, C] float32.
    bias: [C] float32.
  """

  standardizer: Standardizer
  kernel: np.ndarray
  bias: np.ndarray

  def __call__(self, x) -> np.ndarray:
    """[N, D] raw features -> [N, C] float32 logits."""
    return self.standardizer(x) @ self.kernel + self.bias


def fit_linear_probe(
  x: np.ndarray,
  labels: np.ndarray,
  num_classes: int,
  *,
  steps: int = 3000,
  batch_size: int = 256,
  learning_rate: float = 1e-3,
  weight_decay: float = 1e-4,
  seed: int = 0,
) -> LinearProbe:
  """Softmax regression with AdamW on standardised `x` [N, D].

  Args:
    x: [N, D] features (numpy or memmap).
    labels: [N] int labels in [0, num_classes).
    num_classes: C.
    steps: AdamW steps (shuffled epochs of `batch_size`, drop-last).
    batch_size: examples per step.
    learning_rate: constant AdamW learning rate.
    weight_decay: AdamW decoupled weight decay.
    seed: batch order and initialisation.
  """
  labels = np.asarray(labels)
  if len(labels) != len(x) or labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(
      f"labels must be [N]=({len(x)},) ints in [0, {num_classes}); got "
      f"shape {labels.shape}, range [{labels.min()}, {labels.max()}]"
    )
  standardizer = Standardizer.fit(x)
  data = jnp.asarray(standardizer(x))
  targets = jnp.asarray(labels, jnp.int32)
  params = {
    "kernel": jnp.zeros((data.shape[1], num_classes), jnp.float32),
    "bias": jnp.zeros((num_classes,), jnp.float32),
  }
  opt = optax.adamw(learning_rate, weight_decay=weight_decay)
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state, idx):
    def loss(p):
      logits = data[idx] @ p["kernel"] + p["bias"][None]
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets[idx])
      return jnp.mean(ce)

    grads = jax.grad(loss)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  batch_size = min(batch_size, len(labels))
  for s in range(steps):
    idx = shuffled_batch_indices(s, len(labels), batch_size, seed)
    params, opt_state = step(params, opt_state, jnp.asarray(idx, jnp.int32))
  return LinearProbe(
    standardizer, np.asarray(params["kernel"]), np.asarray(params["bias"])
  )
