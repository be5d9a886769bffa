"""The kernels under `shard_map`: one Pallas call per device on its shard.

A `pallas_call` has no SPMD partitioning rule, so under `jax.jit` with
sharded inputs XLA would gather them onto each device first. These
wrappers split the batch over `batch_axes` and the heads over `head_axis`
of a `Mesh` and run the kernel on each device's shard:

* `sharded_position_attention`: attention is independent per (batch row,
  head); query heads and key/value heads are split into the same number of
  contiguous chunks, which keeps each GQA group on one device. Gradients
  flow through the kernel's custom_vjp on each shard.
* `sharded_selection_scores`: each device scores its batch rows with its
  heads; the mean over heads is finished by a `pmean` over `head_axis`
  (every device holds the same number of heads).

Arrays use the kernels' axes (B batch, T/N tokens, H/Hkv heads, K head dim).
The wrappers pick the backend from the mesh's devices unless told.
"""

from jax import lax
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Bool, Float, Int

from kernels_pallas import _common as common
from kernels_pallas.position_attention import (
  PositionAttentionBlocks,
  position_attention,
)
from kernels_pallas.selection_scores import (
  SelectionScoresBlocks,
  selection_scores,
)

AxisNames = str | tuple[str, ...] | None


def _platform(mesh, backend):
  if backend is not None:
    return backend
  platform = mesh.devices.flat[0].platform
  return (
    "gpu"
    if platform in ("gpu", "cuda", "rocm")
    else ("tpu" if platform == "tpu" else None)
  )


def sharded_position_attention(
  q: Float[Array, "B Tq H K"],
  k: Float[Array, "B Tk Hkv K"],
  v: Float[Array, "B Tk Hkv K"],
  q_pos: Int[Array, "B Tq"],
  k_pos: Int[Array, "B Tk"],
  k_valid: Bool[Array, "B Tk"],
  *,
  mesh,
  batch_axes: AxisNames = "data",
  head_axis: AxisNames = None,
  blocks: PositionAttentionBlocks | None = None,
  backend: str | None = None,
  interpret: bool | None = None,
) -> Float[Array, "B Tq H K"]:
  """`position_attention` with B split over `batch_axes`, heads over
  `head_axis`.

  Args:
    q, k, v, q_pos, k_pos, k_valid: as `position_attention`.
    mesh: a `jax.sharding.Mesh`.
    batch_axes: mesh axis name(s) that split B, or None.
    head_axis: mesh axis name(s) that split H and Hkv, or None.
    blocks, interpret: as `position_attention`.
    backend: as `position_attention`; None: the mesh devices' platform
      ("gpu" on CPU).

  Returns:
    [B, Tq, H, K] sharded like q; equal to the unsharded call.

  Raises:
    ValueError: if B, H or Hkv is not divisible by its axes' device count.
  """
  common.check_mesh_axes(
    "sharded_position_attention",
    mesh,
    {
      "q.shape[0]": (q.shape[0], batch_axes),
      "q.shape[2]": (q.shape[2], head_axis),
      "k.shape[2]": (k.shape[2], head_axis),
    },
  )
  heads = P(batch_axes, None, head_axis, None)
  tokens = P(batch_axes, None)

  def local(q, k, v, q_pos, k_pos, k_valid):
    return position_attention(
      q,
      k,
      v,
      q_pos,
      k_pos,
      k_valid,
      blocks=blocks,
      backend=_platform(mesh, backend),
      interpret=interpret,
    )

  return common.shard_map(
    local,
    mesh=mesh,
    in_specs=(heads, heads, heads, tokens, tokens, tokens),
    out_specs=heads,
  )(q, k, v, q_pos, k_pos, k_valid)


def sharded_selection_scores(
  q: Float[Array, "B Q H K"],
  k: Float[Array, "B N Hkv K"],
  q_pos: Int[Array, "B Q"],
  k_pos: Int[Array, "B N"],
  q_valid: Bool[Array, "B Q"],
  k_valid: Bool[Array, "B N"],
  *,
  span_start: int,
  span_len: int,
  mesh,
  batch_axes: AxisNames = "data",
  head_axis: AxisNames = None,
  blocks: SelectionScoresBlocks | None = None,
  backend: str | None = None,
  interpret: bool | None = None,
) -> Float[Array, "B Nv"]:
  """`selection_scores` with B split over `batch_axes`, heads over
  `head_axis` (a `pmean` finishes the mean over heads).

  Args:
    q, k, q_pos, k_pos, q_valid, k_valid, span_start, span_len: as
      `selection_scores`.
    mesh: a `jax.sharding.Mesh`.
    batch_axes: mesh axis name(s) that split B, or None.
    head_axis: mesh axis name(s) that split H and Hkv, or None.
    blocks, interpret: as `selection_scores`.
    backend: as `selection_scores`; None: the mesh devices' platform.

  Returns:
    [B, span_len] float32 sharded over `batch_axes`, replicated over
    `head_axis`; equal to the unsharded call up to summation order.
  """
  common.check_mesh_axes(
    "sharded_selection_scores",
    mesh,
    {
      "q.shape[0]": (q.shape[0], batch_axes),
      "q.shape[2]": (q.shape[2], head_axis),
      "k.shape[2]": (k.shape[2], head_axis),
    },
  )
  heads = P(batch_axes, None, head_axis, None)
  tokens = P(batch_axes, None)

  def local(q, k, q_pos, k_pos, q_valid, k_valid):
    out = selection_scores(
      q,
      k,
      q_pos,
      k_pos,
      q_valid,
      k_valid,
      span_start=span_start,
      span_len=span_len,
      blocks=blocks,
      backend=_platform(mesh, backend),
      interpret=interpret,
    )
    return out if head_axis is None else lax.pmean(out, head_axis)

  return common.shard_map(
    local,
    mesh=mesh,
    in_specs=(heads, heads, tokens, tokens, tokens, tokens),
    out_specs=tokens,
  )(q, k, q_pos, k_pos, q_valid, k_valid)
