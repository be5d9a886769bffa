"""`compacted`: exited examples leave the batch between layer segments.

A batch of 32 with mixed exit depths does real work only for its
survivors: after each segment of `segment_layers` layers the host reads the
number of survivors n (one scalar), and the survivors are packed (a static
`jnp.nonzero(size=bucket)` gather) into the smallest bucket size ≥ n
(`bucket_sizes`), so the next segment runs at that batch size. Every program
has static shapes. A segment's first layer index is a traced argument, so the
compiled programs are one per bucket size reached (two if the last segment
is shorter) plus one per (bucket in, bucket out) compaction: at most
`2 * len(buckets) + len(buckets)**2 / 2` whatever the depth, usually about
`2 * len(buckets)` (`CompactedRunner.num_compiled_programs`).

Padding slots of a bucket (n < bucket) hold copies of a survivor, are marked
invalid, and never write results (their scatter index is out of range and
dropped).

Per-segment host synchronisation costs one device→host scalar read; at batch
32 a layer of a 12-layer d=256 encoder takes tens of milliseconds on CPU, so
it is negligible. At batch 1 prefer `early_stop`, which never leaves the
device.
"""

import jax
import jax.numpy as jnp

from jaxexit import checks
from jaxexit.execution.stack import (
  ExitResult,
  ExitStack,
  batch_size_of,
  check_stack,
  head_output_zeros,
  record_exits,
)
from jaxexit.exits.rules import ExitRule
from jaxexit.typing import PyTree

BUCKET_POLICIES = ("pow2_half", "pow2", "exact")
DEFAULT_BUCKETS = "pow2_half"


def bucket_sizes(
  batch: int, policy: str | tuple[int, ...] = DEFAULT_BUCKETS
) -> tuple[int, ...]:
  """Sorted batch sizes a compacted batch may take, always including `batch`.

  Padding a bucket wastes compute; more sizes cost more compiled programs.
  Measured on a 12-layer encoder at batch 32 with uniformly spread exit
  depths (BENCHMARKS.md), realised/theoretical speed-up was about 0.7-0.8
  with "pow2", 0.8-0.9 with "pow2_half" and 0.95-1.0 with "exact".

  Args:
    batch: the full batch size B.
    policy: "pow2_half" (default: 1, 2, 3, 4, 6, 8, 12, 16, 24, ...: powers
      of two and their 1.5x midpoints, at most 1/3 padding), "pow2" (1, 2,
      4, 8, ...: at most 1/2 padding, fewest programs), "exact" (every size
      1..B: no padding, up to B segment programs), or an explicit tuple.
  """
  checks.positive_int("batch", batch)
  if policy == "exact":
    return tuple(range(1, batch + 1))
  if isinstance(policy, str):
    checks.one_of("buckets", policy, BUCKET_POLICIES)
    sizes, p = set(), 1
    while p < batch:
      sizes.add(p)
      if policy == "pow2_half" and p >= 2:
        sizes.add(p + p // 2)
      p *= 2
  else:
    sizes = set(policy)
    for s in sizes:
      checks.positive_int("bucket size", s)
  return tuple(sorted(s for s in sizes | {batch} if s <= batch))


class CompactedRunner:
  """Runs an `ExitStack` with between-segment compaction; caches programs.

  Create once per (stack, rule, options) and call it on many batches: the
  compiled segment and compaction programs are reused.
  """

  def __init__(
    self,
    stack: ExitStack,
    rule: ExitRule,
    *,
    segment_layers: int = 1,
    buckets: str | tuple[int, ...] = DEFAULT_BUCKETS,
  ):
    check_stack(stack)
    checks.positive_int("segment_layers", segment_layers)
    if not isinstance(buckets, str):
      bucket_sizes(1, buckets)  # validates the explicit sizes
    else:
      checks.one_of("buckets", buckets, BUCKET_POLICIES)
    self.stack, self.rule = stack, rule
    self.segment_layers, self.buckets = segment_layers, buckets
    self._segment = jax.jit(
      self._segment_impl,
      static_argnames=("length",),
      donate_argnames=("exit_layer", "outputs"),
    )
    self._compact = jax.jit(self._compact_impl, static_argnames=("size",))
    self._start = jax.jit(self._start_impl)

  def num_compiled_programs(self) -> int:
    """How many distinct segment and compaction programs were compiled.

    The one set-up program per batch size (`_start`) is not counted.
    """
    return self._segment._cache_size() + self._compact._cache_size()

  def __call__(
    self, params: PyTree, carry: PyTree, *, rule_inputs: PyTree = None
  ) -> ExitResult:
    batch = self._slots(carry)
    sizes = bucket_sizes(batch, self.buckets)
    num_layers = self.stack.num_layers
    rule_state, idx, valid, exit_layer, outputs = self._start(
      params, carry, rule_inputs
    )
    size = batch
    for start in range(0, num_layers, self.segment_layers):
      stop = min(start + self.segment_layers, num_layers)
      carry, rule_state, valid, exit_layer, outputs, num_alive = self._segment(
        params,
        carry,
        rule_state,
        idx,
        valid,
        exit_layer,
        outputs,
        jnp.int32(start),
        length=stop - start,
      )
      if stop == num_layers:
        break
      num_alive = int(num_alive)  # the one host sync per segment
      if num_alive == 0:
        break
      new_size = next(s for s in sizes if s >= num_alive)
      if new_size < size:
        carry, rule_state, idx, valid = self._compact(
          carry, rule_state, idx, valid, size=new_size
        )
        size = new_size
    return ExitResult(exit_layer=exit_layer, outputs=outputs)

  def _slots(self, carry: PyTree) -> int:
    """Examples one program holds: B here; B / n per device in the
    sharded runner (`jaxexit.execution.sharded`), whose buckets are then
    sizes per device."""
    return batch_size_of(carry)

  def _start_impl(self, params, carry, rule_inputs):
    """Initial rule state, slot bookkeeping and exit buffers, on device."""
    batch = batch_size_of(carry)
    return (
      self.rule.init(batch, rule_inputs),
      jnp.arange(batch, dtype=jnp.int32),
      jnp.ones((batch,), bool),
      jnp.full((batch,), self.stack.num_layers - 1, jnp.int32),
      head_output_zeros(self.stack, params, carry),
    )

  def _segment_impl(
    self,
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
    """Layers [start, start + length) at the current bucket size.

    `start` is traced, so one program serves every segment of a bucket size:
    the programs scale with the number of bucket sizes, not with depth.
    """
    last = self.stack.num_layers - 1
    local_out = head_output_zeros(self.stack, params, carry)
    local_layer = jnp.zeros(valid.shape, jnp.int32)
    done = ~valid  # padding slots count as done: they never record.
    for offset in range(length):
      layer = start + offset
      carry = self.stack.layer_fn(params, layer, carry)
      out = self.stack.head_fn(params, layer, carry)
      rule_state, exit_now = self.rule.update(rule_state, out, layer)
      newly = (exit_now | (layer == last)) & ~done
      done, local_layer, local_out = record_exits(
        done, newly, layer, out, local_layer, local_out
      )
    wrote = done & valid
    # Out-of-range targets are dropped: padding and survivors write nothing.
    target = jnp.where(wrote, idx, exit_layer.shape[0])
    exit_layer = exit_layer.at[target].set(local_layer, mode="drop")
    outputs = jax.tree.map(
      lambda g, l: g.at[target].set(l, mode="drop"), outputs, local_out
    )
    valid = valid & ~done
    return carry, rule_state, valid, exit_layer, outputs, valid.sum()

  def _compact_impl(self, carry, rule_state, idx, valid, *, size):
    """Packs the valid slots into a bucket of `size` slots."""
    num_alive = valid.sum()
    (pos,) = jnp.nonzero(valid, size=size, fill_value=0)  # [size]
    take = lambda x: jnp.take(x, pos, axis=0)
    carry, rule_state = jax.tree.map(take, (carry, rule_state))
    slot_valid = jnp.arange(size) < num_alive
    idx = jnp.where(slot_valid, idx[pos], valid.shape[0]).astype(jnp.int32)
    return carry, rule_state, idx, slot_valid
