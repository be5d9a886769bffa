"""CIFAR-10 train / held-out validation / test splits for the vision runs."""

import dataclasses

import numpy as np

from jaxexit.data import ImageSplit, load_cifar, train_val_split


@dataclasses.dataclass(frozen=True)
class Splits:
  """CIFAR-10 train (minus validation), validation and test images."""

  train: ImageSplit
  val: ImageSplit
  test: ImageSplit


def subset(split: ImageSplit, limit: int | None, seed: int) -> ImageSplit:
  """A seeded random subset in the original order (None: all of `split`)."""
  if limit is None or limit >= len(split):
    return split
  idx = np.sort(np.random.default_rng(seed).permutation(len(split))[:limit])
  return split.take(idx)


def load_splits(cfg, data_dir) -> Splits:
  """Train minus a stratified held-out split (`cfg.num_val`), and test.

  `cfg` needs `num_val`, `max_train`, `max_test` and `seed`; thresholds and
  gate statistics are fitted on the held-out split, never on test.
  """
  full = load_cifar("cifar10", "train", data_dir=data_dir)
  train, val = train_val_split(full, cfg.num_val, seed=cfg.seed)
  test = load_cifar("cifar10", "test", data_dir=data_dir)
  return Splits(
    subset(train, cfg.max_train, cfg.seed),
    val,
    subset(test, cfg.max_test, cfg.seed + 1),
  )
