"""Decoding on a mesh: sharded caches, host checks of global arrays.

The decoding entry points (`generate`, `generate_full`,
`generate_self_speculative`) run unchanged on a mesh: place the model's
parameters with `jaxexit.sharding.shard_state` (family "llama", "mamba",
...), the prompts and lengths with `shard_batch` / `global_batch`, and call
them inside `jax.set_mesh(mesh)`; GSPMD partitions the jitted loop. Two
things here make that work:

* `shard_caches`, which each entry point applies to its freshly built
  caches: with a mesh in context they are constrained to the shardings of
  their logical axes (`CACHE_AXES`, mapped by `DEFAULT_RULES`: batch over
  ("data", "fsdp"), key/value heads and the SSM inner width over
  "tensor"), the same rules as the parameters that write them. Without a
  mesh they are returned as they are.
* `host_values`, through which the host-side checks of
  `jaxexit.decoding.inputs` read prompts and lengths: a global array that
  spans several processes is gathered on every process (one all-gather of
  the [B, T] prompt ids per call, which every process makes, as it calls
  the entry point), so every process sees the whole batch and raises the
  same error or none.

Usage::

  mesh = make_mesh("data=2,fsdp=2,tensor=2")
  nnx.update(model, shard_state(nnx.state(model), mesh, family="llama"))
  prompts, lengths = shard_batch((prompts, lengths), mesh, ("data", "fsdp"))
  with jax.set_mesh(mesh):
    out = generate(model, LMHeadExits(), prompts, lengths, 0.9, config)

Axes: B batch, S cache slots, Hkv key/value heads, K head width, C conv
channels, E SSM inner width, H SSM heads, N SSM state.
"""

import jax
import numpy as np
from jax.sharding import get_abstract_mesh

from jaxexit.typing import PyTree

# Logical axes of the leaves of `DecoderBackbone` caches, rows as in
# `jaxexit.sharding.families` (paths end in the cache field's name).
CACHE_AXES = (
  ("(k|v)", ("batch", None, "kv_heads", "head_dim")),  # KVCache [B,S,Hkv,K]
  ("valid", ("batch", None)),  # KVCache [B, S]
  ("conv", ("batch", "mlp", None)),  # MambaCache [B, C, d_conv - 1]
  ("ssm", ("batch", "mlp", "state")),  # Mamba-1 [B, E, N]
  ("ssm", ("batch", "heads", "head_dim", "state")),  # Mamba-2 [B, H, K, N]
)


def shard_caches(caches: PyTree) -> PyTree:
  """`caches` constrained to their logical shardings on the mesh in
  context (`jax.set_mesh`); unchanged when there is none.

  Leaves follow `CACHE_AXES`, mapped by `DEFAULT_RULES` less the mesh
  axes the mesh lacks; a dimension its mesh axes do not divide is
  replicated (as for parameters, logged once).

  Raises:
    ValueError: naming a cache leaf that no row of `CACHE_AXES` matches
      (a backbone with another cache layout needs a row).
  """
  mesh = get_abstract_mesh()
  if mesh.empty:
    return caches
  # Imported here: jaxexit.sharding loads jaxexit.data, which `import
  # jaxexit` (and with it the decoding engine) must not.
  from jaxexit.sharding.logical import match_path, path_str
  from jaxexit.sharding.mesh import MESH_AXES
  from jaxexit.sharding.rules import DEFAULT_RULES, check_rules, logical_spec

  rules = check_rules(DEFAULT_RULES, MESH_AXES)
  rules = {
    name: tuple(a for a in axes if a in mesh.axis_names)
    for name, axes in rules.items()
  }

  def spec(path, leaf):
    pattern, axes = match_path(
      path_str(path), leaf.ndim, CACHE_AXES, "decoder cache"
    )
    return logical_spec(axes, leaf.shape, mesh.shape, rules, pattern)

  specs = jax.tree_util.tree_map_with_path(spec, caches)
  return jax.lax.with_sharding_constraint(caches, specs)


def host_values(x):
  """`x` readable on this host: a `jax.Array` spanning several processes
  is gathered whole (a collective: every process must call it); anything
  else is returned as it is."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return x
