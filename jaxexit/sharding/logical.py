"""Which table row names the axes of a variable: path matching.

A variable's path is its keys joined by "/" (`layers/0/self_attn/q_proj/
kernel`; the `.value` of an `nnx.Variable` is dropped). A row matches when
its pattern matches a tail of the path that starts at a "/" in full, and
the longest matching tail decides. So the rows written for a model's own
`nnx.state` also name the same parameter inside a train state
(`0/layers/...`) and an optimizer moment (`1/opt_state/0/mu/layers/...`):
each moment follows its parameter. Of the rows matching that tail, the one
whose axes count equals the array's rank is taken (a per-layer head
[L, D, C] and a shared one [D, C] share a path); two such rows are an
error, as is a path no row matches. Scalars (step counts, RNG counters)
need no row: they are replicated. `infer_family` finds the one family
whose table names every array of a model's state.
"""

import re
from collections.abc import Sequence

import jax
import numpy as np

from jaxexit.sharding.families import FAMILY_AXES, Axes, Table
from jaxexit.typing import PyTree

Family = str | Sequence[tuple[str, Axes]]


def resolve_family(family: Family) -> tuple[str, Table]:
  """`(name, table)` of a `FAMILY_AXES` key or of a table given directly.

  Raises:
    ValueError: naming an unknown family and the known ones.
  """
  if not isinstance(family, str):
    return "custom table", tuple(family)
  if family not in FAMILY_AXES:
    raise ValueError(
      f"unknown model family {family!r}; known: {sorted(FAMILY_AXES)}"
    )
  return family, FAMILY_AXES[family]


def path_str(path: tuple) -> str:
  """The "/"-joined keys of a `jax.tree_util` key path."""
  keys = list(path)
  last = keys[-1] if keys else None
  if isinstance(last, jax.tree_util.GetAttrKey) and last.name == "value":
    keys.pop()  # an nnx.Variable's array
  names = []
  for key in keys:
    for field in ("key", "idx", "name"):
      if hasattr(key, field):
        names.append(str(getattr(key, field)))
        break
    else:
      names.append(str(key))
  return "/".join(names)


def match_path(
  path: str, ndim: int, table: Table, family: str = "custom table"
) -> tuple[str, Axes]:
  """The `(pattern, axes)` row naming the array at `path`.

  Args:
    path: the variable's path (`path_str`).
    ndim: its rank; picks between rows that match the same tail.
    table: the family's rows.
    family: its name, for errors.

  Returns:
    The matching row; its axes may not number `ndim` when no matching row
    has that rank (e.g. a factored optimizer moment): the caller
    replicates it.

  Raises:
    ValueError: naming the path when no row matches it, or when two rows
      of its rank match it.
  """
  keys = path.split("/")
  for start in range(len(keys)):
    tail = "/".join(keys[start:])
    rows = [row for row in table if re.fullmatch(row[0], tail)]
    if rows:
      break
  else:
    raise ValueError(
      f"no row of the {family!r} sharding table matches variable "
      f"{path!r} (rank {ndim}); add a (pattern, axes) row for it"
    )
  fitting = [row for row in rows if len(row[1]) == ndim]
  if len(fitting) > 1:
    raise ValueError(
      f"variable {path!r} (rank {ndim}) is matched by several rows of the "
      f"{family!r} sharding table: {fitting}"
    )
  return (fitting or rows)[0]


def logical_axes(tree: PyTree, family: Family) -> dict[str, Axes]:
  """The logical axis names of every non-scalar array of `tree`.

  Args:
    tree: a model's `nnx.state`, a train state or an optimizer state (or
      their `jax.ShapeDtypeStruct`s).
    family: a `FAMILY_AXES` key, or a table of `(pattern, axes)` rows.

  Returns:
    `{path: axes}` in tree order, one entry of `len(axes)` names (or None)
    per non-scalar array.

  Raises:
    ValueError: see `match_path` and `resolve_family`.
  """
  name, table = resolve_family(family)
  axes = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    ndim = len(np.shape(leaf) if not hasattr(leaf, "shape") else leaf.shape)
    if ndim:
      axes[path_str(path)] = match_path(path_str(path), ndim, table, name)[1]
  return axes


def infer_family(tree: PyTree) -> str:
  """The `FAMILY_AXES` family whose table names every array of `tree`.

  Args:
    tree: a model's `nnx.state` (or its `jax.ShapeDtypeStruct`s).

  Returns:
    The family's key: every non-scalar array has a row of its rank. When
    several families fit and name every array alike (DYNAMAX score heads
    alone), the first in `FAMILY_AXES` order.

  Raises:
    ValueError: when no family fits, or several name some array
      differently (naming them); pass `family=` explicitly then.
  """
  arrays = [
    (path_str(path), np.ndim(leaf) if not hasattr(leaf, "ndim") else leaf.ndim)
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  ]
  arrays = [(path, ndim) for path, ndim in arrays if ndim]
  fits = {}
  for name, table in FAMILY_AXES.items():
    try:
      axes = tuple(match_path(p, n, table, name)[1] for p, n in arrays)
    except ValueError:
      continue
    if all(len(a) == n for a, (_, n) in zip(axes, arrays)):
      fits[name] = axes
  if len(set(fits.values())) != 1:
    first = arrays[0][0] if arrays else "(no arrays)"
    raise ValueError(
      f"cannot infer the model family of a state with {len(arrays)} "
      f"arrays (first {first!r}): families {sorted(fits)} fit; pass "
      f"family= (one of {sorted(FAMILY_AXES)} or a table of rows)"
    )
  return next(iter(fits))
