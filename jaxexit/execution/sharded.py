"""The execution modes on a batch sharded over devices (`shard_map`).

Under plain GSPMD a `lax.while_loop` is one loop for the whole mesh, so
`early_stop` on a sharded batch would stop only after the deepest example
of the global batch, and `compacted` would gather survivors across
devices. Here every device runs its own block of b = B / n examples:

  early_stop  `early_stop`'s loop inside `shard_map`: each device stops
              after its own deepest example (`ExitResult.device_layers`).
  compacted   `CompactedRunner`'s segment and compaction programs inside
              `shard_map`: each device packs its own survivors. Bucket
              sizes are per device (`bucket_sizes(b)`), so a compacted
              global batch is always n x a bucket. Between segments the
              host reads one replicated scalar, the most survivors on any
              device, which picks every device's bucket.
  simulate    needs no per-device control: GSPMD partitions `simulate`
              over the batch sharding.

The parameters enter every device whole (`P()`: one sharded with fsdp or
tensor axes is all-gathered once per call), so the per-device programs
need no collectives and may stop at different layers. The rule state is
initialised for the whole batch, outside `shard_map`, then split with it,
so a rule keyed on the batch (a PRNG key split into B keys) decides as on
one device; the results equal the unsharded modes' (tested). Usage::

  mesh = make_mesh("data=8")
  runner = make_sharded_runner("early_stop", stack, rule, mesh)
  result = runner(params, shard_batch(carry, mesh))

With several processes the carry is a global array (`global_batch`); the
host only ever reads replicated scalars.

Axes: B global batch, b = B / n examples per device, n batch shards.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxexit import checks
from jaxexit.execution.compacted import DEFAULT_BUCKETS, CompactedRunner
from jaxexit.execution.early_stop import stop_loop
from jaxexit.execution.modes import MODES
from jaxexit.execution.simulate import simulate
from jaxexit.execution.stack import (
  ExitResult,
  ExitStack,
  batch_size_of,
  check_stack,
  head_output_zeros,
)
from jaxexit.exits.rules import ExitRule
from jaxexit.typing import PyTree

Axes = str | tuple[str, ...]


def batch_axes(mesh: Mesh, axes: Axes | None = None) -> tuple[str, ...]:
  """The mesh axes that split the batch: `axes`, or (None) those of the
  rules' "batch" ("data", "fsdp") that the mesh has.

  Raises:
    ValueError: naming an axis the mesh does not have.
  """
  # Imported here: jaxexit.sharding loads jaxexit.data, which `import
  # jaxexit` (and with it this module) must not.
  from jaxexit.sharding import DEFAULT_RULES
  from jaxexit.sharding.data_parallel import batch_device_count

  if axes is None:
    axes = tuple(a for a in DEFAULT_RULES["batch"] if a in mesh.shape)
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  batch_device_count(mesh, axes)
  return axes


def batch_shards(mesh: Mesh, axes: tuple[str, ...], carry: PyTree) -> int:
  """n, the devices that split the batch of `carry`.

  Raises:
    ValueError: if n does not divide the batch size.
  """
  from jaxexit.sharding.data_parallel import batch_device_count

  n = batch_device_count(mesh, axes)
  batch = batch_size_of(carry)
  if batch % n:
    raise ValueError(
      f"batch size {batch} is not divisible by the {n} devices of mesh "
      f"axes {axes}; pad the batch to a multiple of {n}"
    )
  return n


def _map(mesh: Mesh, fn: Callable, in_specs, out_specs) -> Callable:
  return jax.shard_map(
    fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
  )


def sharded_early_stop(
  stack: ExitStack,
  rule: ExitRule,
  params: PyTree,
  carry: PyTree,
  *,
  mesh: Mesh,
  axes: Axes | None = None,
  rule_inputs: PyTree = None,
) -> ExitResult:
  """`early_stop` with each device stopping at its own deepest example.

  Args:
    stack: the model's layers and exit heads.
    rule: the exit rule.
    params: parameter pytree for `stack` (any sharding).
    carry: input pytree, every leaf `[B, ...]`, B divisible by n.
    mesh: the device mesh.
    axes: mesh axes splitting the batch (default: `batch_axes(mesh)`).
    rule_inputs: per-batch data for `rule.init` (for the whole batch).

  Returns:
    `ExitResult` with `device_layers` [n], the layers each batch shard ran.
  """
  check_stack(stack)
  axes = batch_axes(mesh, axes)
  batch_shards(mesh, axes, carry)
  spec = P(axes)

  def local(params, carry, rule_state):
    layers_run, exit_layer, outputs = stop_loop(
      stack, rule, params, carry, rule_state
    )
    return layers_run[None], exit_layer, outputs  # [1] per device

  rule_state = rule.init(batch_size_of(carry), rule_inputs)
  device_layers, exit_layer, outputs = _map(
    mesh, local, (P(), spec, spec), spec
  )(params, carry, rule_state)
  return ExitResult(
    exit_layer=exit_layer, outputs=outputs, device_layers=device_layers
  )


class ShardedCompactedRunner(CompactedRunner):
  """`CompactedRunner` compacting each device's block of the batch.

  The segment and compaction programs of `CompactedRunner` run inside
  `shard_map` on b = B / n slots per device; `buckets` are sizes per
  device. Create once and call on many batches, as `CompactedRunner`.
  """

  def __init__(
    self,
    stack: ExitStack,
    rule: ExitRule,
    mesh: Mesh,
    *,
    axes: Axes | None = None,
    segment_layers: int = 1,
    buckets: str | tuple[int, ...] = DEFAULT_BUCKETS,
  ):
    super().__init__(
      stack, rule, segment_layers=segment_layers, buckets=buckets
    )
    self.mesh, self.axes = mesh, batch_axes(mesh, axes)
    spec = P(self.axes)
    self._spec = NamedSharding(mesh, spec)

    def segment(
      params,
      carry,
      rule_state,
      idx,
      valid,
      exit_layer,
      outputs,
      start,
      *,
      length,
    ):
      def local(*args):
        *state, alive = self._segment_impl(*args, length=length)
        return (*state, jax.lax.pmax(alive, self.axes))

      return _map(
        mesh, local, (P(),) + (spec,) * 6 + (P(),), (spec,) * 5 + (P(),)
      )(params, carry, rule_state, idx, valid, exit_layer, outputs, start)

    def compact(carry, rule_state, idx, valid, *, size):
      local = functools.partial(self._compact_impl, size=size)
      return _map(mesh, local, (spec,) * 4, spec)(carry, rule_state, idx, valid)

    self._segment = jax.jit(
      segment,
      static_argnames=("length",),
      donate_argnames=("exit_layer", "outputs"),
    )
    self._compact = jax.jit(compact, static_argnames=("size",))
    self._start = jax.jit(self._sharded_start)

  def _slots(self, carry: PyTree) -> int:
    return batch_size_of(carry) // batch_shards(self.mesh, self.axes, carry)

  def _sharded_start(self, params, carry, rule_inputs):
    """The rule state of the whole batch; each device's slots 0..b-1."""
    batch = batch_size_of(carry)
    n = batch_shards(self.mesh, self.axes, carry)
    state = (
      self.rule.init(batch, rule_inputs),
      jnp.tile(jnp.arange(batch // n, dtype=jnp.int32), n),
      jnp.ones((batch,), bool),
      jnp.full((batch,), self.stack.num_layers - 1, jnp.int32),
      head_output_zeros(self.stack, params, carry),
    )
    return jax.lax.with_sharding_constraint(state, self._spec)


def make_sharded_runner(
  mode: str,
  stack: ExitStack,
  rule: ExitRule,
  mesh: Mesh,
  *,
  axes: Axes | None = None,
  **options,
) -> Callable[..., ExitResult]:
  """A compiled `runner(params, carry, *, rule_inputs=None) -> ExitResult`
  over a batch split on `axes` of `mesh` (see the module docstring).

  Cached per (mode, stack, rule, mesh, axes, options) like `make_runner`.

  Args:
    mode: one of `MODES`.
    stack: the model's layers and exit heads.
    rule: the exit rule.
    mesh: the device mesh.
    axes: mesh axes splitting the batch (default: `batch_axes(mesh)`).
    **options: mode options, as for `make_runner`.
  """
  checks.one_of("mode", mode, MODES)
  axes = batch_axes(mesh, axes)
  return _cached(mode, stack, rule, mesh, axes, tuple(sorted(options.items())))


@functools.lru_cache(maxsize=32)
def _cached(mode, stack, rule, mesh, axes, options):
  options = dict(options)
  if mode == "compacted":
    return ShardedCompactedRunner(stack, rule, mesh, axes=axes, **options)
  if mode == "early_stop":
    fn = functools.partial(sharded_early_stop, mesh=mesh, axes=axes)
  else:
    sharding = NamedSharding(mesh, P(axes))

    def fn(stack, rule, params, carry, *, rule_inputs=None, **opts):
      batch_shards(mesh, axes, carry)
      carry = jax.lax.with_sharding_constraint(carry, sharding)
      return simulate(
        stack, rule, params, carry, rule_inputs=rule_inputs, **opts
      )

  jitted = jax.jit(functools.partial(fn, stack, rule, **options))
  return lambda params, carry, *, rule_inputs=None: jitted(
    params, carry, rule_inputs=rule_inputs
  )
