"""Argument checks that turn bad input into a ValueError naming the value.

The validation policy of jaxexit (exit maths, execution modes, decoding):

* Shapes, dtypes and Python scalars are checked always: they are static
  under `jit`.
* Array *values* are checked when the array is concrete (an eager call):
  `finite` (no NaN/±inf), `probabilities` (finite and in [0, 1], for λ, p,
  halting scores), `logits` (no NaN or +inf; −inf is a masked class and is
  allowed, but not a row that is −inf everywhere), `token_ids` (integers in
  [0, vocab)).
* Inside `jit` the values are tracers. There the value checks are skipped,
  unless debug checks are on (`debug_checks(True)`, or the environment
  variable `JAXEXIT_DEBUG_CHECKS=1` at import): then each becomes a
  `jax.experimental.checkify.check`, and the function must run under
  `checkify.checkify` (`checked(f)` does that and raises the first failure).
  The flag is read when a function is traced; changing it clears JAX's
  trace and compilation caches (`jax.clear_caches()`), so every function
  is traced again under the new setting.

Every failure is a ValueError (eager) or a checkify JaxRuntimeError (traced)
that names the argument and the first bad value.
"""

import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

_DEBUG = [os.environ.get("JAXEXIT_DEBUG_CHECKS", "0") not in ("", "0")]


class _DebugChecks:
  """The value of `debug_checks(...)`: usable bare or as a `with` block."""

  def __init__(self, previous: bool):
    self._previous = previous

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    _set_debug(self._previous)


def _set_debug(enabled: bool) -> bool:
  """Sets the flag; returns the old value. A change clears JAX's caches, as
  jaxprs traced under the other setting would be reused otherwise."""
  previous, _DEBUG[0] = _DEBUG[0], enabled
  if previous != enabled:
    jax.clear_caches()
  return previous


def debug_checks(enabled: bool | None = None) -> "_DebugChecks | bool":
  """Turns traced value checks on or off; with no argument, returns the flag.

  `jaxexit.debug_checks(True)` turns them on for the rest of the process;
  `with jaxexit.debug_checks(True): ...` for one block. A change of the
  flag clears JAX's caches (functions are traced and compiled again).
  """
  if enabled is None:
    return _DEBUG[0]
  if not isinstance(enabled, bool):
    raise ValueError(f"enabled must be a bool; got enabled={enabled!r}")
  return _DebugChecks(_set_debug(enabled))


def checked(fn: Callable) -> Callable:
  """`fn` run under `checkify.checkify`; raises the first failed check.

  Use with `debug_checks(True)` to find the first NaN inside a jitted run:
  `checked(jax.jit(step))(state, batch)`.
  """

  def run(*args, **kwargs):
    err, out = checkify.checkify(fn, errors=checkify.user_checks)(
      *args, **kwargs
    )
    err.throw()
    return out

  return run


def _first_index(bad: np.ndarray) -> tuple[int, ...]:
  """The index of the first True in `bad` (which holds at least one)."""
  return tuple(int(i) for i in np.argwhere(bad)[0])


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def in_range(
  name: str,
  value,
  low: float | int,
  high: float | int,
  *,
  low_open: bool = False,
  high_open: bool = False,
) -> None:
  """Raises unless `low <(=) value <(=) high` (Python scalars or arrays)."""
  if not _is_concrete(value):
    return
  v = np.asarray(value, dtype=np.float64)
  ok_low = (v > low) if low_open else (v >= low)
  ok_high = (v < high) if high_open else (v <= high)
  if not (np.all(ok_low) and np.all(ok_high) and np.all(np.isfinite(v))):
    lb = "(" if low_open else "["
    hb = ")" if high_open else "]"
    raise ValueError(
      f"{name} must lie in {lb}{low}, {high}{hb}; got {name}={value!r}"
    )


def positive_int(name: str, value, *, minimum: int = 1) -> None:
  """Raises unless `value` is a Python int ≥ `minimum`."""
  if (
    isinstance(value, bool)
    or not isinstance(value, (int, np.integer))
    or value < minimum
  ):
    raise ValueError(
      f"{name} must be an integer >= {minimum}; got {name}={value!r}"
    )


def finite(name: str, x) -> None:
  """Raises if the array holds NaN or ±inf (traced: see `debug_checks`)."""
  if not _is_concrete(x):
    if _DEBUG[0] and jnp.issubdtype(x.dtype, jnp.floating):
      bad = ~jnp.isfinite(x)
      checkify.check(
        ~jnp.any(bad),
        f"{name} must be finite; found {{}} non-finite value(s)",
        jnp.sum(bad),
      )
    return
  arr = np.asarray(x)
  if np.issubdtype(arr.dtype, np.floating) or arr.dtype.name == "bfloat16":
    bad = ~np.isfinite(arr.astype(np.float32))
    if bad.any():
      first = _first_index(bad)
      raise ValueError(
        f"{name} must be finite; found {int(bad.sum())} non-finite value(s), "
        f"first {arr[first].item()!r} at index {first} (shape {arr.shape})"
      )


def rank_at_least(name: str, x, rank: int, axes: str) -> None:
  """Raises unless `x.ndim >= rank`; `axes` documents the expected layout."""
  if np.ndim(x) < rank:
    raise ValueError(
      f"{name} must have at least {rank} dims laid out as [{axes}]; "
      f"got shape {np.shape(x)}"
    )


def same_shape(names: Sequence[str], *xs) -> None:
  """Raises unless all arrays have one shape."""
  shapes = [np.shape(x) for x in xs]
  if any(s != shapes[0] for s in shapes):
    listing = ", ".join(f"{n}.shape={s}" for n, s in zip(names, shapes))
    raise ValueError(f"shapes must match: {listing}")


def one_of(name: str, value, choices: Sequence) -> None:
  """Raises unless `value in choices`."""
  if value not in choices:
    raise ValueError(
      f"unknown {name}={value!r}; expected one of {list(choices)}"
    )


def probabilities(name: str, x) -> None:
  """Raises unless every value is finite and in [0, 1] (λ, p, scores)."""
  if not _is_concrete(x):
    if _DEBUG[0]:
      v = jnp.asarray(x, jnp.float32)
      bad = ~((v >= 0) & (v <= 1))  # NaN compares False: counted as bad
      checkify.check(
        ~jnp.any(bad),
        f"{name} must hold probabilities in "
        "[0, 1]; found {} value(s) outside",
        jnp.sum(bad),
      )
    return
  v = np.asarray(x, dtype=np.float64)
  bad = ~((v >= 0) & (v <= 1))
  if bad.any():
    first = _first_index(bad)
    raise ValueError(
      f"{name} must hold probabilities in [0, 1]; found {int(bad.sum())} "
      f"value(s) outside, first {v[first].item()!r} at index {first} "
      f"(shape {v.shape})"
    )


def logits(name: str, x) -> None:
  """Raises on NaN or +inf, or a row (last axis) that is −inf everywhere.

  A −inf logit is a masked class and is allowed.
  """
  if not _is_concrete(x):
    if _DEBUG[0]:
      v = jnp.asarray(x, jnp.float32)
      bad = jnp.isnan(v) | (v == jnp.inf)
      dead = jnp.all(v == -jnp.inf, axis=-1)
      checkify.check(
        ~jnp.any(bad),
        f"{name} must not hold NaN or +inf; found {{}}",
        jnp.sum(bad),
      )
      checkify.check(
        ~jnp.any(dead),
        f"{name} has {{}} row(s) that are -inf for every class",
        jnp.sum(dead),
      )
    return
  v = np.asarray(x, dtype=np.float32)
  bad = np.isnan(v) | (v == np.inf)
  if bad.any():
    first = _first_index(bad)
    raise ValueError(
      f"{name} must not hold NaN or +inf; found {int(bad.sum())}, first "
      f"{v[first].item()!r} at index {first} (shape {v.shape})"
    )
  dead = np.all(v == -np.inf, axis=-1)
  if v.size and dead.any():
    first = _first_index(dead)
    raise ValueError(
      f"{name} has {int(dead.sum())} row(s) that are -inf for every class "
      f"(a fully masked row), first at index {first} (shape {v.shape})"
    )


def token_ids(name: str, ids, vocab_size: int) -> None:
  """Raises unless concrete `ids` are integers in [0, vocab_size).

  Token ids are checked on the host at the API boundary; traced ids are
  checked only with `debug_checks` on.
  """
  if not _is_concrete(ids):
    if not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(
        f"{name} must be integer token ids; got dtype {ids.dtype}"
      )
    if _DEBUG[0]:
      bad = (ids < 0) | (ids >= vocab_size)
      checkify.check(
        ~jnp.any(bad),
        f"{name} must lie in [0, {vocab_size}); found {{}} id(s) outside",
        jnp.sum(bad),
      )
    return
  arr = np.asarray(ids)
  if arr.size and not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"{name} must be integer token ids; got dtype {arr.dtype}")
  bad = (arr < 0) | (arr >= vocab_size)
  if bad.any():
    first = _first_index(bad)
    raise ValueError(
      f"{name} must lie in [0, {vocab_size}) (the vocabulary); found "
      f"{int(bad.sum())} id(s) outside, first {int(arr[first])} at index "
      f"{first} (shape {arr.shape})"
    )
