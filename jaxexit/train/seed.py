"""Deterministic seeding: every random draw is a function of (seed, step).

A run keeps one base key made from an integer seed and derives the key of
step `s` with `fold_in(base, s)`. No key is threaded from step to step, so a
run resumed at step `s` draws exactly what an uninterrupted run draws there,
whatever happened before the interruption.
"""

import jax

from jaxexit import checks
from jaxexit.typing import PRNGKeyArray


def base_key(seed: int) -> PRNGKeyArray:
  """Returns the run's base key (a typed key, shape `()`).

  Args:
    seed: a non-negative Python int.

  Returns:
    `jax.random.key(seed)`.
  """
  checks.positive_int("seed", seed, minimum=0)
  return jax.random.key(seed)


def step_key(base: PRNGKeyArray, step) -> PRNGKeyArray:
  """Returns the key of one training step: `fold_in(base, step)`.

  Args:
    base: the run's base key, shape `()`.
    step: the step index (Python int or int32 scalar, may be traced).

  Returns:
    A typed key of shape `()` that depends only on `(base, step)`.
  """
  return jax.random.fold_in(base, step)
