"""Choosing a method's operating point on held-out data, never on dev.

Each point of a method's sweep is scored on a held-out part of the training
split (examples the model never trained on). The chosen point is the
cheapest one whose held-out score is within `tolerance` of the best
non-degenerate point. A point is degenerate when every example exits at the
same layer (a fixed depth in disguise): it is chosen only when the sweep
offers nothing else, and the record then says so. Static and full models
exit at one layer by construction and are never called degenerate.
"""

from collections.abc import Sequence


def is_degenerate(point: dict) -> bool:
  """Every example of the split exits at one layer."""
  return sum(1 for c in point["exit_histogram"] if c) <= 1


def choose(
  points: Sequence[dict], *, tolerance: float, fixed_depth: bool
) -> tuple[dict, bool]:
  """`(chosen point, degenerate)` among held-out sweep `points`.

  Args:
    points: `run.sweep` records on the held-out split.
    tolerance: held-out score that may be given up for a cheaper point.
    fixed_depth: the method exits at one layer by construction.
  """
  if not points:
    raise ValueError("an empty sweep has no operating point")
  usable = (
    list(points) if fixed_depth else [p for p in points if not is_degenerate(p)]
  )
  degenerate = not usable
  if degenerate:
    usable = list(points)
  best = max(p["score"] for p in usable)
  near = [p for p in usable if p["score"] >= best - tolerance]
  chosen = min(near, key=lambda p: (p["avg_layers"], -p["score"]))
  return chosen, degenerate and not fixed_depth
