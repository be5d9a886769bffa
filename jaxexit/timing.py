"""Wall-clock timing that is honest about JAX's asynchronous dispatch.

Every timed call blocks on its result (`jax.block_until_ready`); compiling is
absorbed by untimed warm-up calls; candidates compared with each other are
interleaved round-robin (`time_side_by_side`) so machine noise hits them all
alike, and the median is the number to report.
"""

import dataclasses
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from jaxexit import checks


@dataclasses.dataclass(frozen=True)
class Timing:
  """Wall-clock seconds of repeated calls.

  Attributes:
    median: median seconds per call (the number to report).
    min: fastest call (the least noisy lower bound).
    seconds: every measured call, in order.
  """

  median: float
  min: float
  seconds: tuple[float, ...]


def _summarise(seconds: Sequence[float]) -> Timing:
  secs = tuple(float(s) for s in seconds)
  return Timing(median=statistics.median(secs), min=min(secs), seconds=secs)


def _timed_call(fn: Callable[..., Any], args: tuple[Any, ...]) -> float:
  # JAX dispatches asynchronously: without blocking on the result we would
  # time only the dispatch.
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def time_fn(
  fn: Callable[..., Any], *args: Any, warmup: int = 2, repeats: int = 7
) -> Timing:
  """Times `fn(*args)` after `warmup` untimed calls (which absorb compiling).

  Args:
    fn: the function, typically jitted.
    *args: its arguments.
    warmup: untimed calls first, ≥ 0.
    repeats: timed calls, ≥ 1.

  Returns:
    A `Timing` of the `repeats` calls.
  """
  return time_side_by_side({"fn": (fn, args)}, warmup=warmup, repeats=repeats)[
    "fn"
  ]


def time_side_by_side(
  candidates: Mapping[str, tuple[Callable[..., Any], tuple[Any, ...]]],
  warmup: int = 2,
  repeats: int = 7,
) -> dict[str, Timing]:
  """Times several functions interleaved, so machine noise hits all alike.

  Each round calls every candidate once; the starting candidate rotates
  between rounds so none always runs first (after an idle gap) or last.

  Args:
    candidates: name -> (fn, args tuple).
    warmup: untimed rounds first, ≥ 0.
    repeats: timed rounds, ≥ 1.

  Returns:
    name -> `Timing`, in the order of `candidates`.
  """
  checks.positive_int("warmup", warmup, minimum=0)
  checks.positive_int("repeats", repeats)
  if not candidates:
    raise ValueError("candidates must name at least one function; got {}")
  names = list(candidates)
  for _ in range(warmup):
    for name in names:
      _timed_call(*candidates[name])
  seconds = {name: [] for name in names}
  for r in range(repeats):
    for i in range(len(names)):
      name = names[(r + i) % len(names)]
      seconds[name].append(_timed_call(*candidates[name]))
  return {name: _summarise(seconds[name]) for name in names}
