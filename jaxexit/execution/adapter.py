"""Exits for any Flax NNX model: `exit_stack(layers, heads)`.

The execution modes run an `ExitStack`, two pure functions of a parameter
pytree and a layer index that may be traced. `exit_stack` builds them from
NNX modules, so a model needs no hand-written split/merge:

  stack, params = jx.exit_stack(model.layers, model.heads)
  runner = jx.make_runner("compacted", stack, jx.max_softmax_rule(0.9))
  result = runner(params, carry)

How each side (the layers, the heads) is laid out over the L layers:

  stacked(module)       parameters on a leading L axis (`nnx.vmap`); layer i
                        is the module with every leaf sliced at i (a dynamic
                        slice for a traced i). A bare module means this.
  layer_list(modules)   L separate modules (`nnx.List`, list or tuple); a
                        traced i dispatches through `lax.switch`. A bare
                        list or tuple means this.
  shared(module, L)     one module applied at every layer (ALBERT).
  indexed(module, L, call)   one module that takes the index itself:
                        `call(module, i, x)`, i possibly traced.
  branches(module, L, call)  one module and a Python int i: one branch per
                        layer, `lax.switch` for a traced i (the stages of a
                        CNN, the segments of a two-branch model).

Layers are called as `call(module, carry) -> carry` (the module's
`__call__` by default), heads as `call(module, carry)` returning an
`ExitHeadOutput` or a `[B, C]` logits array (wrapped as
`ExitHeadOutput(logits=...)`); `indexed`/`branches` calls also take i.

Each side is split once into a graph definition and its state. The stack's
functions hold only graph definitions, layouts and call functions, and
compare equal when those do, so calling `exit_stack` again on the same model
gives an equal `ExitStack` and `make_runner` reuses its compiled programs.
Pass a module-level function or a frozen dataclass as `call` (a fresh
lambda per call is a new key, so it compiles again).
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxexit import checks
from jaxexit.execution.stack import ExitStack
from jaxexit.exits.outputs import ExitHeadOutput
from jaxexit.typing import Array, PyTree

LAYOUTS = ("stacked", "list", "shared", "indexed", "branches")


def layer_slice(tree: PyTree, layer: "int | Array") -> PyTree:
  """Every leaf of a layer-stacked `tree` at `layer` (int or traced int32).

  Leaves have the layer axis first, `[L, ...] -> [...]`.
  """
  return jax.tree.map(lambda w: w[layer], tree)


def layer_module(module: nnx.Module, layer: "int | Array") -> nnx.Module:
  """Layer `layer` of a vmap-stacked module, as an ordinary module."""
  graphdef, state = nnx.split(module)
  return nnx.merge(graphdef, layer_slice(state, layer))


def switch(branches: Sequence[Callable], index: "int | Array", *args):
  """`branches[index](*args)`: a direct call for a Python int (one branch
  traced), else `lax.switch` over all of them."""
  if isinstance(index, int):
    return branches[index](*args)
  return jax.lax.switch(index, list(branches), *args)


def call_module(module: nnx.Module, x: PyTree) -> PyTree:
  """The default call: `module(x)`."""
  return module(x)


@dataclasses.dataclass(frozen=True, eq=False)
class PerLayer:
  """One side of a stack: a module and how layer i calls it.

  Build it with `stacked`, `layer_list`, `shared`, `indexed` or `branches`.

  Attributes:
    module: the NNX module (an `nnx.List` for "list").
    layout: one of `LAYOUTS`.
    num_layers: L.
    call: `(module, x)` for stacked/list/shared, `(module, i, x)` for
      indexed/branches.
  """

  module: Any
  layout: str
  num_layers: int
  call: Callable = call_module

  def __post_init__(self):
    checks.one_of("layout", self.layout, LAYOUTS)
    checks.positive_int("num_layers", self.num_layers)
    if not callable(self.call):
      raise ValueError(f"call must be callable; got {self.call!r}")


def stacked(module: nnx.Module, call: Callable = call_module) -> PerLayer:
  """Layers whose parameters share a leading L axis (made by `nnx.vmap`).

  Raises:
    ValueError: if the module has no array state, or its leaves disagree on
      the leading axis.
  """
  leaves = jax.tree.leaves(nnx.state(module))
  sizes = {jnp.shape(w)[0] if jnp.ndim(w) else None for w in leaves}
  if not leaves or len(sizes) != 1 or None in sizes:
    shapes = sorted({jnp.shape(w) for w in leaves})
    raise ValueError(
      f"stacked() needs a module whose every parameter has the layer axis "
      f"first with one size L (made by nnx.vmap); got {type(module).__name__}"
      f" with leaf shapes {shapes}. For separate per-layer modules pass an "
      "nnx.List (layer_list), for one module at every layer use shared()"
    )
  return PerLayer(module, "stacked", sizes.pop(), call)


def layer_list(
  modules: "nnx.List | Sequence[nnx.Module]", call: Callable = call_module
) -> PerLayer:
  """L separate modules, one per layer."""
  modules = (
    modules if isinstance(modules, nnx.List) else nnx.List(list(modules))
  )
  if not len(modules):
    raise ValueError("layer_list() needs at least one module; got none")
  return PerLayer(modules, "list", len(modules), call)


def shared(
  module: nnx.Module, num_layers: int, call: Callable = call_module
) -> PerLayer:
  """One module applied at each of `num_layers` layers."""
  return PerLayer(module, "shared", num_layers, call)


def indexed(module: nnx.Module, num_layers: int, call: Callable) -> PerLayer:
  """One module called as `call(module, i, x)`, i possibly traced."""
  return PerLayer(module, "indexed", num_layers, call)


def branches(module: nnx.Module, num_layers: int, call: Callable) -> PerLayer:
  """One module called as `call(module, i, x)` with a Python int i."""
  return PerLayer(module, "branches", num_layers, call)


def as_per_layer(side: Any, name: str) -> PerLayer:
  """A `PerLayer` as given, a list/tuple/`nnx.List` as `layer_list`, any
  other module as `stacked`."""
  if isinstance(side, PerLayer):
    return side
  if isinstance(side, (nnx.List, list, tuple)):
    return layer_list(side)
  if isinstance(side, nnx.Module):
    return stacked(side)
  raise ValueError(
    f"{name} must be an nnx.Module, a list of modules or a PerLayer "
    f"(stacked/layer_list/shared/indexed/branches); got "
    f"{type(side).__name__}"
  )


@dataclasses.dataclass(frozen=True)
class SideFn:
  """`(state, layer, x) -> y` of one side, from its graph definition.

  Hashable and compared by value (graph definition, layout, call), which is
  what lets `make_runner` key its cache on it.
  """

  graphdef: nnx.GraphDef
  layout: str
  num_layers: int
  call: Callable

  def __call__(self, state: PyTree, layer: "int | Array", x: PyTree):
    if self.layout == "stacked":
      return self.call(nnx.merge(self.graphdef, layer_slice(state, layer)), x)
    if self.layout == "shared":
      return self.call(nnx.merge(self.graphdef, state), x)
    if self.layout == "indexed":
      return self.call(nnx.merge(self.graphdef, state), layer, x)
    return switch(
      [self._branch(i) for i in range(self.num_layers)], layer, state, x
    )

  def _branch(self, i: int) -> Callable:
    if self.layout == "list":
      return lambda state, x: self.call(nnx.merge(self.graphdef, state)[i], x)
    return lambda state, x: self.call(nnx.merge(self.graphdef, state), i, x)


@dataclasses.dataclass(frozen=True)
class StackLayerFn:
  """The stack's `layer_fn`: the layers side on `params["layers"]`."""

  side: SideFn

  def __call__(self, params, layer, carry):
    return self.side(params["layers"], layer, carry)


@dataclasses.dataclass(frozen=True)
class StackHeadFn:
  """The stack's `head_fn`: the heads side on `params["heads"]`, an array
  result wrapped as `ExitHeadOutput(logits=...)`."""

  side: SideFn

  def __call__(self, params, layer, carry) -> ExitHeadOutput:
    out = self.side(params["heads"], layer, carry)
    if isinstance(out, ExitHeadOutput):
      return out
    return ExitHeadOutput(logits=out)


def functional(side: PerLayer) -> tuple[SideFn, nnx.State]:
  """`(fn, state)` with `fn(state, layer, x)` calling layer `layer`."""
  graphdef, state = nnx.split(side.module)
  return SideFn(graphdef, side.layout, side.num_layers, side.call), state


def exit_stack(layers: Any, heads: Any) -> tuple[ExitStack, nnx.State]:
  """The `ExitStack` of a model's layers and exit heads, and its params.

  Args:
    layers: the L layers, `call(layer, carry) -> carry`: a vmap-stacked
      module, a list / `nnx.List` of modules, or a `PerLayer`.
    heads: an exit head per layer, `call(head, carry) -> ExitHeadOutput |
      [B, C] logits`, laid out the same ways.

  Returns:
    `(stack, params)` with `params = nnx.State({"layers": ..., "heads":
    ...})`; pass both to `make_runner` / the execution modes. Updating the
    model's weights means calling `exit_stack` again (cheap: the compiled
    runner is reused).

  Raises:
    ValueError: if a side is not a module, a list or a `PerLayer`, or the
      two sides disagree on L.
  """
  layers = as_per_layer(layers, "layers")
  heads = as_per_layer(heads, "heads")
  if layers.num_layers != heads.num_layers:
    raise ValueError(
      f"layers and heads disagree on the number of layers: "
      f"{layers.num_layers} layers ({layers.layout}) vs "
      f"{heads.num_layers} heads ({heads.layout})"
    )
  layer_side, layer_state = functional(layers)
  head_side, head_state = functional(heads)
  stack = ExitStack(
    StackLayerFn(layer_side), StackHeadFn(head_side), layers.num_layers
  )
  return stack, nnx.State({"layers": layer_state, "heads": head_state})
