"""Placing checkpoint tensors into a model, each device reading its shard.

Every weight loader (`llama_weights`, `llava_weights`, `mamba_weights`,
`hf_weights`, `gguf_weights`) checks the checkpoint against the model,
describes each parameter as a `LazyTensor` in the model's layout
(`jaxexit.models.lazy_tensors`) and hands the pairs to `assign`:

* without a mesh, as before: each tensor is read whole, cast to the
  variable's dtype and put on the default device (`jnp.asarray`), one
  tensor at a time;
* with a mesh, the model (usually abstract, from `nnx.eval_shape`) gets
  the `NamedSharding`s of its family's logical axes and the rules
  (`jaxexit.sharding.state_shardings`), and each tensor becomes a global
  array through `jax.make_array_from_callback`: every addressable device
  receives the box of its shard, read from the checkpoint alone (a
  memory-mapped safetensors file reads just those bytes; replicas share
  one read). No device ever holds a whole sharded tensor, and the host
  holds at most one tensor's local boxes at a time.

The arrays take the variable's dtype: the `*_from_pretrained` builders
give the abstract model the checkpoint's own dtype (`checkpoint_dtype`,
so bf16 stays bf16) unless a `param_dtype` is asked for.
"""

import collections
import functools
from collections.abc import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, Sharding
from jax.sharding import PartitionSpec as P
from jax.typing import DTypeLike

from jaxexit.models.lazy_tensors import LazyTensor, from_array, normalise
from jaxexit.sharding import state_shardings
from jaxexit.sharding.logical import Family
from jaxexit.sharding.rules import Rules

Pair = tuple[nnx.Variable, LazyTensor | np.ndarray]


def checkpoint_dtype(state: Mapping[str, object]) -> DTypeLike:
  """The floating dtype that holds most of a checkpoint's elements.

  A bf16 checkpoint is bf16 even if it carries a float32 buffer (RoPE's
  `inv_freq`); a checkpoint without floating tensors gives float32.

  Args:
    state: `{name: array or LazyTensor}`.

  Returns:
    The `jax.numpy` scalar type (`jnp.bfloat16`, `jnp.float32`, ...), the
    form the model configs' `param_dtype` defaults take, so that a config
    built with it equals (and hashes as) one built without.
  """
  counts = collections.Counter()
  for value in state.values():
    dtype = np.dtype(value.dtype)
    if jnp.issubdtype(dtype, jnp.floating):
      counts[dtype.name] += int(np.prod(np.shape(value)))
  name = counts.most_common(1)[0][0] if counts else "float32"
  return getattr(jnp, name)


def variable_shardings(
  model: nnx.Module, mesh: Mesh, rules: Rules | None, *, family: Family
) -> dict[int, Sharding]:
  """`{id(variable): NamedSharding}` of every `nnx.Param` of `model`.

  Args:
    model: a model, abstract (`nnx.eval_shape`) or not.
    mesh: the mesh (`jaxexit.sharding.make_mesh`).
    rules: logical axis -> mesh axes (None: the default rules).
    family: the model's `jaxexit.sharding.FAMILY_AXES` key or table.
  """
  tree = state_shardings(
    nnx.state(model, nnx.Param), mesh, rules, family=family
  )
  by_path = {
    path: leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf
    for path, leaf in nnx.to_flat_state(tree)
  }
  return {
    id(node): by_path[path]
    for path, node in nnx.iter_graph(model)
    if isinstance(node, nnx.Param)
  }


def _key(box, shape) -> tuple:
  """A hashable form of a box (slices hash only from Python 3.12)."""
  return tuple((s.start, s.stop) for s in normalise(box, shape))


def place(value, sharding: Sharding, dtype) -> jax.Array:
  """`value` as a global array with `sharding`, each device reading only
  its box.

  Args:
    value: a `LazyTensor` (or an array) in the variable's layout.
    sharding: the array's sharding.
    dtype: the array's dtype (each box is cast on the host).

  Returns:
    A `jax.Array` of `value.shape` whose addressable shards were read
    from `value`, one read per distinct box.
  """
  value = from_array(value)
  shape = value.shape
  boxes = sharding.addressable_devices_indices_map(shape).values()
  keys = sorted({_key(box, shape) for box in boxes})
  reads = value.read_many([tuple(slice(*k) for k in key) for key in keys])
  by_key = {
    key: np.asarray(v).astype(dtype, copy=False) for key, v in zip(keys, reads)
  }
  return jax.make_array_from_callback(
    shape, sharding, lambda box: by_key[_key(box, shape)], dtype=dtype
  )


def assign(
  model: nnx.Module,
  pairs: Iterable[Pair],
  *,
  family: Family,
  mesh: Mesh | None = None,
  rules: Rules | None = None,
) -> None:
  """Writes each `(variable, value)` of `pairs` into `model` in place.

  Args:
    model: the model the variables belong to (abstract or not).
    pairs: variables of `model` with their values in its layout; each is
      cast to the variable's dtype.
    family: the model's sharding family (used with `mesh`).
    mesh: None: each value whole on the default device. A mesh: each
      value placed by `place` with the variable's `NamedSharding`.
    rules: logical axis -> mesh axes with `mesh` (None: the defaults).

  Raises:
    ValueError: a value whose shape is not its variable's.
  """
  shardings = (
    {}
    if mesh is None
    else variable_shardings(model, mesh, rules, family=family)
  )
  for var, value in pairs:
    value = from_array(value)
    if tuple(value.shape) != tuple(var.shape):
      raise ValueError(
        f"a value of shape {value.shape} for a variable of shape {var.shape}"
      )
    if mesh is None:
      array = jnp.asarray(np.asarray(value), dtype=var.dtype)
    else:
      array = place(value, shardings[id(var)], var.dtype)
    # `set_value`, not `var[...] =`: the variable may still be abstract.
    var.set_value(array)


def init_missing(
  model: nnx.Module,
  init: Callable[[], nnx.Module],
  *,
  family: Family,
  mesh: Mesh | None = None,
  rules: Rules | None = None,
) -> None:
  """Fills the variables of `model` still abstract with `init()`'s values.

  For parameters a checkpoint may lack (a BERT pooler). `init()` builds
  the whole model under `jax.jit`, which keeps only the missing variables
  (the rest is dead code), with their shardings when `mesh` is given; the
  values are those of a fresh `init()` up to float rounding (XLA may fuse
  the jitted initialiser differently: 1 ulp on jax 0.10.2, none on 0.12).

  Args:
    model: a model from `nnx.eval_shape(init)`, partly loaded.
    init: builds the model (same config and seed as the abstract one).
    family, mesh, rules: as for `assign`.
  """
  missing = {
    path: var
    for path, var in nnx.iter_graph(model)
    if isinstance(var, nnx.Variable)
    and isinstance(var.get_value(), jax.ShapeDtypeStruct)
  }
  if not missing:
    return
  paths = list(missing)
  out = None
  if mesh is not None:
    shardings = variable_shardings(model, mesh, rules, family=family)
    replicated = NamedSharding(mesh, P())
    out = [shardings.get(id(missing[p]), replicated) for p in paths]

  @functools.partial(jax.jit, out_shardings=out)
  def fresh():
    flat = dict(nnx.to_flat_state(nnx.state(init())))
    return [flat[path].get_value() for path in paths]

  for path, value in zip(paths, fresh()):
    missing[path].set_value(value)
