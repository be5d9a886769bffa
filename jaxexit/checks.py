"""Argument checks that turn bad input into a ValueError naming the value.

Checks on array *values* (finiteness) run only on concrete arrays: inside
`jax.jit` the values are tracers and the check is skipped, so call the public
functions once eagerly (or wrap them with `jax.experimental.checkify`) when
the inputs are untrusted. Checks on shapes and Python scalars always run,
because those are static under `jit`.
"""

from collections.abc import Sequence

import jax
import numpy as np


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def in_range(name: str, value, low: float | int, high: float | int, *,
             low_open: bool = False, high_open: bool = False) -> None:
  """Raises unless `low <(=) value <(=) high` (Python scalars or arrays)."""
  if not _is_concrete(value):
    return
  v = np.asarray(value, dtype=np.float64)
  ok_low = (v > low) if low_open else (v >= low)
  ok_high = (v < high) if high_open else (v <= high)
  if not (np.all(ok_low) and np.all(ok_high) and np.all(np.isfinite(v))):
    lb = "(" if low_open else "["
    hb = ")" if high_open else "]"
    raise ValueError(f"{name} must lie in {lb}{low}, {high}{hb}; got {name}={value!r}")


def positive_int(name: str, value, *, minimum: int = 1) -> None:
  """Raises unless `value` is a Python int ≥ `minimum`."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}; got {name}={value!r}")


def finite(name: str, x) -> None:
  """Raises if a concrete array holds NaN or ±inf (skipped under `jit`)."""
  if not _is_concrete(x):
    return
  arr = np.asarray(x)
  if np.issubdtype(arr.dtype, np.floating) or arr.dtype.name == "bfloat16":
    bad = ~np.isfinite(arr.astype(np.float32))
    if bad.any():
      first = tuple(int(i) for i in np.argwhere(bad)[0])
      raise ValueError(
          f"{name} must be finite; found {int(bad.sum())} non-finite value(s), "
          f"first {arr[first]!r} at index {first} (shape {arr.shape})")


def rank_at_least(name: str, x, rank: int, axes: str) -> None:
  """Raises unless `x.ndim >= rank`; `axes` documents the expected layout."""
  if np.ndim(x) < rank:
    raise ValueError(
        f"{name} must have at least {rank} dims laid out as [{axes}]; "
        f"got shape {np.shape(x)}")


def same_shape(names: Sequence[str], *xs) -> None:
  """Raises unless all arrays have one shape."""
  shapes = [np.shape(x) for x in xs]
  if any(s != shapes[0] for s in shapes):
    listing = ", ".join(f"{n}.shape={s}" for n, s in zip(names, shapes))
    raise ValueError(f"shapes must match: {listing}")


def one_of(name: str, value, choices: Sequence) -> None:
  """Raises unless `value in choices`."""
  if value not in choices:
    raise ValueError(f"unknown {name}={value!r}; expected one of {list(choices)}")
