"""The functional NNX train and eval steps.

Following Flax's "functional training loop" (guides/performance), the model
and its `nnx.Optimizer` are split once outside the step,
`graphdef, state = nnx.split((model, optimizer))`, and the step is a plain
`jax.jit` of a pure function that merges them at the top and returns the new
`state`. `graphdef` has no array leaves (it is a static pytree), so passing it
as an argument only keys the jit cache. No NNX transform or graph update runs
inside the trace, which keeps the step valid under NNX's "tree mode".

Gradients are taken with `jax.value_and_grad` with respect to the `nnx.Param`
leaves only. Other variables the loss mutates (BatchNorm statistics, `Rngs`
counters, sown intermediates) are carried out of the differentiated function
as auxiliary output and written back before the optimizer update.

A loss function has the signature::

  loss_fn(model, batch, rng) -> (loss, metrics)

with `loss` a float scalar and `metrics` a dict of scalars.
"""

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxexit.nn.remat import remat_blocks
from jaxexit.typing import PRNGKeyArray, PyTree

LossFn = Callable[
  [nnx.Module, PyTree, PRNGKeyArray], tuple[jax.Array, Mapping[str, Any]]
]
EvalFn = Callable[[nnx.Module, PyTree], Mapping[str, Any]]
TrainStep = Callable[
  [nnx.GraphDef, nnx.State, PyTree, PRNGKeyArray],
  tuple[nnx.State, dict[str, jax.Array]],
]


def split_train_state(
  model: nnx.Module, tx: optax.GradientTransformation
) -> tuple[nnx.GraphDef, nnx.State]:
  """Wraps `tx` in an `nnx.Optimizer` over `nnx.Param` and splits both.

  Args:
    model: the model (its current values become the initial state).
    tx: the optax transformation.

  Returns:
    `(graphdef, state)` of the pair `(model, optimizer)`.
  """
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  return nnx.split((model, optimizer))


def merge_train_state(
  graphdef: nnx.GraphDef, state: nnx.State
) -> tuple[nnx.Module, nnx.Optimizer]:
  """Inverse of `split_train_state`: returns `(model, optimizer)`."""
  model, optimizer = nnx.merge(graphdef, state)
  return model, optimizer


def _loss_and_grads(loss_fn: LossFn, model: nnx.Module, batch, rng):
  """Value and Param-gradient of `loss_fn`, plus the mutated non-Params."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def objective(params):
    m = nnx.merge(graphdef, params, rest, copy=True)
    loss, metrics = loss_fn(m, batch, rng)
    _, _, new_rest = nnx.split(m, nnx.Param, ...)
    return loss, (metrics, new_rest)

  (loss, (metrics, new_rest)), grads = jax.value_and_grad(
    objective, has_aux=True
  )(params)
  return loss, metrics, new_rest, grads


def _train_step(loss_fn: LossFn, remat: str | None) -> TrainStep:
  """The pure step `step(graphdef, state, batch, rng)` (not yet jitted);
  the model's blocks are rematerialised with policy `remat` (None: no)."""

  def step(graphdef, state, batch, rng):
    model, optimizer = nnx.merge(graphdef, state)
    with remat_blocks(remat):
      loss, metrics, new_rest, grads = _loss_and_grads(
        loss_fn, model, batch, rng
      )
    nnx.update(model, new_rest)
    optimizer.update(model, grads)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **metrics}
    return nnx.state((model, optimizer)), metrics

  return step


def make_train_step(
  loss_fn: LossFn, *, donate: bool = True, remat: str | None = None
) -> TrainStep:
  """Builds the jitted step `step(graphdef, state, batch, rng)`.

  Args:
    loss_fn: `(model, batch, rng) -> (loss, metrics)`; `loss` is a float
      scalar and `metrics` a dict of scalars.
    donate: donate the input `state` buffers to the output (halves the peak
      memory of parameters and optimizer state; the caller must not reuse the
      state it passed in).
    remat: rematerialise each block of the model's stack in the backward
      pass with this policy ("full", "dots"; see `jaxexit.nn.remat`), or
      None. The gradients are the same; the activation memory is less.

  The step is cached per `(loss_fn, donate, remat)`: runs that pass the
  same loss function object (e.g. one per seed) share one jitted step, so
  its compiled programs are reused.

  Returns:
    `step(graphdef, state, batch, rng) -> (state, metrics)` where `state` is
    the split state of `(model, optimizer)` (see `split_train_state`) and
    `metrics` holds `loss`, `grad_norm` and the loss function's metrics
    (float32 scalars).
  """
  return _jitted_step(loss_fn, donate, remat)


@functools.cache
def _jitted_step(loss_fn: LossFn, donate: bool, remat: str | None):
  donate_argnames = ("state",) if donate else ()
  return jax.jit(_train_step(loss_fn, remat), donate_argnames=donate_argnames)


def make_sharded_train_step(
  loss_fn: LossFn,
  state_shardings: PyTree,
  batch_sharding: NamedSharding,
  *,
  donate: bool = True,
  remat: str | None = None,
) -> TrainStep:
  """`make_train_step`'s step jitted with in and out shardings.

  GSPMD partitions the step from these shardings: the state enters and
  leaves in `state_shardings` (an updated parameter keeps its parameter's
  sharding), the batch in `batch_sharding`, and the rng and metrics are
  replicated over the batch sharding's mesh.

  Args:
    loss_fn: as in `make_train_step`.
    state_shardings: a `NamedSharding` per array of the train state
      (`jaxexit.sharding.state_shardings`).
    batch_sharding: the sharding of every batch leaf, split on its leading
      axis B (`NamedSharding(mesh, P(("data", "fsdp")))`).
    donate: as in `make_train_step`.
    remat: as in `make_train_step`.

  Returns:
    `step(graphdef, state, batch, rng) -> (state, metrics)`.
  """
  replicated = NamedSharding(batch_sharding.mesh, P())
  return jax.jit(
    _train_step(loss_fn, remat),
    in_shardings=(None, state_shardings, batch_sharding, replicated),
    out_shardings=(state_shardings, replicated),
    donate_argnames=("state",) if donate else (),
  )


def make_eval_step(eval_fn: EvalFn, *, eval_mode: bool = True):
  """Builds the jitted `eval_step(graphdef, state, batch) -> metrics`.

  The state is not modified (any variable the model mutates is discarded).

  Args:
    eval_fn: `(model, batch) -> metrics`, a dict of arrays.
    eval_mode: call `model.eval()` first (Dropout deterministic, BatchNorm on
      running averages).

  Returns:
    `eval_step(graphdef, state, batch)` taking either the train state of
    `split_train_state` or the split state of the model alone.
  """

  @jax.jit
  def eval_step(graphdef, state, batch):
    merged = nnx.merge(graphdef, state)
    model = merged[0] if isinstance(merged, tuple) else merged
    if eval_mode:
      model.eval()
    return dict(eval_fn(model, batch))

  return eval_step
