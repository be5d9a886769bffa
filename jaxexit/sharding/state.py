"""Shardings of a model's state, a train state or an optimizer state.

`state_shardings` names every array's dimensions with its family's table
(`jaxexit.sharding.families`), maps the names to mesh axes with the rules
(`jaxexit.sharding.rules`) and returns the `NamedSharding`s, in the tree's
structure; `shard_state` places the arrays there. The tree may be the
model's `nnx.state`, the train state of `jaxexit.train.split_train_state`
(`{0: model, 1: nnx.Optimizer}`) or a bare optax state: an optimizer
moment (`opt_state/0/mu/<param path>`) follows its parameter, and scalars
(`count`, `step`) are replicated. Usage::

  mesh = make_mesh("data=2,fsdp=2,tensor=2")
  graphdef, state = split_train_state(model, optax.adamw(1e-3))
  state = shard_state(state, mesh, family="llama")
  batch = shard_batch(batch, mesh, DEFAULT_RULES["batch"])
  with jax.set_mesh(mesh):
    state, metrics = step(graphdef, state, batch, rng)
"""

import warnings

import jax
import numpy as np
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec as P

from jaxexit.sharding.logical import (
  Family,
  match_path,
  path_str,
  resolve_family,
)
from jaxexit.sharding.rules import (
  Rules,
  check_rules,
  default_rules,
  logical_spec,
)
from jaxexit.typing import PyTree


def state_shardings(
  tree: PyTree,
  mesh: Mesh | AbstractMesh,
  rules: Rules | None = None,
  *,
  family: Family,
) -> PyTree:
  """A `NamedSharding` for every array of `tree`.

  Args:
    tree: a model's `nnx.state`, a train state or an optimizer state, of
      arrays or `jax.ShapeDtypeStruct`s (e.g. from `nnx.eval_shape`).
    mesh: the mesh (`jaxexit.sharding.make_mesh`), or an `AbstractMesh`
      to plan for devices this host does not have.
    rules: logical axis -> mesh axis, tuple of mesh axes, or None
      (replicated); logical axes without a rule are replicated. None:
      `DEFAULT_RULES` (less the mesh axes `mesh` lacks). Given rules
      that name no logical axis of the tree's arrays are reported by a
      warning (except "batch", which shards data).
    family: a key of `jaxexit.sharding.FAMILY_AXES` ("llama", "mamba",
      ...), or a table of `(pattern, axes)` rows.

  Returns:
    `tree`'s structure with a `NamedSharding` at every array.

  Raises:
    ValueError: naming an unknown family, a rule's unknown mesh axis, or
      an array that no table row (or more than one) matches.
  """
  name, table = resolve_family(family)
  given = default_rules(mesh.axis_names) if rules is None else rules
  checked = check_rules(given, mesh.axis_names)
  named = set()

  def sharding(path, leaf):
    shape = tuple(np.shape(leaf) if not hasattr(leaf, "shape") else leaf.shape)
    if not shape:
      return NamedSharding(mesh, P())
    pattern, axes = match_path(path_str(path), len(shape), table, name)
    named.update(axes)
    spec = logical_spec(axes, shape, mesh.shape, checked, pattern)
    return NamedSharding(mesh, spec)

  shardings = jax.tree_util.tree_map_with_path(sharding, tree)
  unused = {
    axis: value
    for axis, value in (rules or {}).items()
    if axis != "batch" and axis not in named
  }
  if unused:
    warnings.warn(
      f"sharding rules {unused} match no parameter of the {name!r} state "
      f"(its logical axes: {sorted(a for a in named if a)})",
      stacklevel=2,
    )
  return shardings


def shard_state(
  tree: PyTree, mesh: Mesh, rules: Rules | None = None, *, family: Family
) -> PyTree:
  """`tree` placed with `state_shardings(tree, mesh, rules, family=...)`.

  Returns:
    `tree` as `jax.Array`s, each stored as the shards of its sharding.
  """
  return jax.device_put(tree, state_shardings(tree, mesh, rules, family=family))
