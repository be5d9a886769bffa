"""What both kernels share: backend choice, tiling rules, padding, checks.

Backends. A Pallas kernel here has two lowerings, picked by `backend`:

  "gpu"  Triton (`jax.experimental.pallas.triton`), [B, T, H, K] layout;
  "tpu"  Mosaic TPU (`jax.experimental.pallas.tpu`), [B, H, T, K] layout.

`backend=None` takes the platform of the inputs' devices (or, for tracers,
`jax.default_backend()`); on CPU it takes "gpu", whose interpreter is the
fast one. `interpret=None` means "the inputs live on a CPU": the GPU
lowering then runs in Pallas' plain interpreter and the TPU lowering in TPU
interpret mode (`pltpu.InterpretParams()`, a simulator of TPU memory, about
100x slower). CPU without the interpreter has no lowering: `resolve` raises.

Tiling rules, checked before any tracing:

  Triton  every loaded/stored tile has a power-of-two size (Pallas' Triton
          lowering); `tl.dot` needs every dimension >= 16, so a block that
          feeds a dot is a power of two >= 16.
  Mosaic  the last two dimensions of a block are multiples of (8, 128), or
          equal to the array's (Pallas TPU docs, "Noteworthy properties and
          restrictions"); a kernel's row tile is a sublane dimension
          (multiple of 8), a key tile a lane dimension (multiple of 128).

Sequences are padded up to a multiple of the block (explicit, documented in
each kernel); blocks are shrunk for sequences shorter than one block, to
the smallest legal tile that covers them (`fit_block`).
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

NEG_INF = float(jnp.finfo(jnp.float32).min)
# Padding and dropped keys get a position after every query, and padding query
# rows one before every key, so `k_pos <= q_pos` alone carries every mask.
# Real position ids must therefore lie strictly between the two.
NEVER_SEEN = int(np.iinfo(np.int32).max)
SEES_NOTHING = int(np.iinfo(np.int32).min)

BACKENDS = ("gpu", "tpu")
LOWERINGS = {"gpu": "Triton", "tpu": "Mosaic TPU"}
_PLATFORM_ALIASES = {"cuda": "gpu", "rocm": "gpu"}
# Triton's tl.dot needs M, N, K >= 16; TPU vregs are 8 sublanes x 128 lanes.
MIN_GPU_BLOCK = 16
TPU_SUBLANES, TPU_LANES = 8, 128
# Devices that cross-lowering targets by default (see `lowering_target`).
DEFAULT_LOWERING_KINDS = {"gpu": "NVIDIA H100 80GB HBM3", "tpu": "TPU v5 lite"}


def _platform_of(arrays) -> str | None:
  """Platform of the first concrete array's devices; None for tracers."""
  for x in arrays:
    try:
      platform = next(iter(x.devices())).platform
    except Exception:  # noqa: BLE001 (tracers raise; NumPy has no devices)
      continue
    return _PLATFORM_ALIASES.get(platform, platform)
  return None


def resolve(op: str, backend, interpret, *arrays):
  """Lowering and pallas_call `interpret` argument for one call.

  Args:
    op: the kernel's name, for error messages.
    backend: "gpu", "tpu" or None (the inputs' platform; "gpu" on CPU).
    interpret: True, False or None (True iff the inputs live on a CPU).
    *arrays: the inputs, to read their device platform.

  Returns:
    (backend, interpret_arg): backend in `BACKENDS`; interpret_arg is what
    `pl.pallas_call(interpret=...)` takes: False, True (plain interpreter)
    or `pltpu.InterpretParams()` (TPU interpret mode).

  Raises:
    ValueError: for an unknown backend or interpret value, or for a platform
      without a lowering when the interpreter is off.
  """
  if backend is not None and backend not in BACKENDS:
    raise ValueError(
      f"{op}: backend must be one of {BACKENDS} or None; got {backend=}"
    )
  if interpret is not None and not isinstance(interpret, bool):
    raise ValueError(
      f"{op}: interpret must be True, False or None; got {interpret=}"
    )
  platform = _platform_of(arrays) or _PLATFORM_ALIASES.get(
    jax.default_backend(), jax.default_backend()
  )
  if interpret is None:
    interpret = platform == "cpu"
  if backend is None:
    if platform in BACKENDS:
      backend = platform
    elif interpret:
      backend = "gpu"
    else:
      have = ", ".join(f"{b!r} ({LOWERINGS[b]})" for b in BACKENDS)
      raise ValueError(
        f"{op}: Pallas has no lowering for platform {platform!r}; the "
        f"kernels have lowerings for {have}. Pass interpret=True to run "
        "the Pallas interpreter, backend='gpu' or 'tpu' to cross-lower, or "
        "use the XLA reference (impl='xla')."
      )
  if not interpret:
    return backend, False
  return backend, tpu_interpret_params() if backend == "tpu" else True


def tpu_interpret_params():
  """`interpret=` value for TPU interpret mode.

  `pltpu.InterpretParams()` (and `force_tpu_interpret_mode`) exist with the
  same meaning in jax 0.10.2 and 0.12.1; this is the one place to change if
  a later jax moves them.
  """
  return pltpu.InterpretParams()


def is_power_of_two(n: int) -> bool:
  return n > 0 and not n & (n - 1)


def check_positive(owner: str, name: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(
      f"{owner}.{name} must be a positive int; got {name}={value!r}"
    )


def check_tile(
  owner: str, name: str, value: int, backend: str, tpu_multiple: int
) -> None:
  """Raises unless `value` obeys `backend`'s tiling rule for this tile.

  Args:
    owner: the blocks dataclass' name, for the message.
    name: the field.
    value: the tile size.
    backend: "gpu" or "tpu".
    tpu_multiple: 8 for a sublane (second-to-last) tile dimension, 128 for a
      lane (last) one.
  """
  if backend == "gpu" and (value < MIN_GPU_BLOCK or not is_power_of_two(value)):
    raise ValueError(
      f"{owner}.{name}={value} breaks the GPU (Triton) tiling rule: "
      f"tiles must be powers of two >= {MIN_GPU_BLOCK} (loads and stores "
      "of power-of-two size; tl.dot needs dimensions >= 16)"
    )
  if backend == "tpu" and value % tpu_multiple:
    dim = "second-to-last" if tpu_multiple == TPU_SUBLANES else "last"
    raise ValueError(
      f"{owner}.{name}={value} breaks the TPU (Mosaic) tiling rule: the "
      "last two block dimensions must be multiples of (8, 128); "
      f"{name} is a {dim} dimension, so a multiple of {tpu_multiple}"
    )


def fit_block(block: int, length: int, backend: str, tpu_multiple: int) -> int:
  """`block`, shrunk to the smallest legal tile covering `length` if less.

  GPU: the next power of two >= 16; TPU: the next multiple of
  `tpu_multiple`. The result obeys the same rule as `block`.
  """
  if backend == "gpu":
    need = max(MIN_GPU_BLOCK, pl.next_power_of_2(length))
  else:
    need = round_up(length, tpu_multiple)
  return min(block, need)


def padded_head_dim(d: int, backend: str) -> int:
  """Head dim after zero padding: a power of two (Triton) or 128 (TPU)."""
  return pl.next_power_of_2(d) if backend == "gpu" else round_up(d, TPU_LANES)


def compiler_params(backend: str, head_dim: int, grid_rank: int):
  """Triton warps/stages, or Mosaic's all-parallel grid semantics."""
  if backend == "gpu":
    return pltriton.CompilerParams(
      num_warps=4 if head_dim <= 64 else 8, num_stages=2
    )
  # Every grid point writes its own output block: all axes are parallel
  # (megacore TPUs split them over their two cores).
  return pltpu.CompilerParams(dimension_semantics=("parallel",) * grid_rank)


def scalar_table_spec(backend: str, shape: tuple[int, ...]) -> pl.BlockSpec:
  """A small int table read with scalar loads (block-skipping bounds).

  On TPU it lives whole in SMEM (scalar memory: control flow reads it); on
  GPU it is one block covering the array.
  """
  if backend == "tpu":
    return pl.BlockSpec(memory_space=pltpu.SMEM)
  return pl.BlockSpec(shape, lambda *_: (0,) * len(shape))


def check_array(name: str, x, shape: tuple, kind: str) -> None:
  """Raises unless `x` has `shape` (None matches any size) and dtype kind.

  `kind` is "float", "int" or "bool".
  """
  got = np.shape(x)
  if len(got) != len(shape) or any(
    want not in (None, size) for want, size in zip(shape, got)
  ):
    want = tuple("*" if s is None else s for s in shape)
    raise ValueError(f"{name}.shape={got}; expected {want}")
  dtypes = {"float": jnp.floating, "int": jnp.integer, "bool": jnp.bool_}
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, dtypes[kind]):
    raise ValueError(f"{name}.dtype={dtype}; expected a {kind} dtype")


def pad_axis(x, axis: int, size: int, value=0):
  """`x` padded with `value` at the end of `axis` up to `size`."""
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths, constant_values=value)


def round_up(n: int, block: int) -> int:
  return -(-n // block) * block


def dot_nt(a, b):
  """a @ b.T in float32: [M, K] x [N, K] -> [M, N]."""
  return lax.dot_general(
    a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32
  )


def dot_tn(a, b):
  """a.T @ b in float32: [M, N] x [M, K] -> [N, K]."""
  return lax.dot_general(
    a, b, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32
  )


def position_mask(q_pos, k_pos, k_valid):
  """[B, Tq, Tk] bool: key j is visible to query i (k_pos <= q_pos, valid)."""
  return (k_pos[:, None, :] <= q_pos[:, :, None]) & k_valid[:, None, :]


def lowering_target(backend: str, device_kind: str | None = None):
  """Context that makes an abstract `backend` device the lowering target.

  Cross-lowering on a machine without the accelerator
  (`jit(f).trace(...).lower(lowering_platforms=("cuda",))` or `("tpu",)`)
  still needs the target's hardware facts, which Pallas reads from the
  abstract mesh's device: Triton wants a compute capability (jax >= 0.12
  raises "No supported GPU devices found, please specify an abstract GPU
  device" without one), Mosaic a TPU generation (some lowering rules ask).

  Args:
    backend: "gpu" or "tpu".
    device_kind: the device to target; default an H100 / a TPU v5e.
  """
  kind = device_kind or DEFAULT_LOWERING_KINDS[backend]
  device = jax.sharding.AbstractDevice(
    device_kind=kind, num_cores=1, platform=backend
  )
  return jax.sharding.use_abstract_mesh(
    jax.sharding.AbstractMesh((), (), abstract_device=device)
  )


def shard_map(f, *, mesh, in_specs, out_specs):
  """`f` under `shard_map`, for meshes with Auto or Explicit axes.

  Uses `jax.shard_map` (jax >= 0.7) or `jax.experimental.shard_map`.
  Arguments are first resharded to `in_specs` when the mesh has Explicit
  axes (shard_map then requires their shardings to match; on Auto meshes
  jit reshards by itself). Replication checks are off: pallas_call has no
  replication rule in every supported jax version, and the wrappers'
  out_specs are exact by design.
  """
  if hasattr(jax, "shard_map"):
    mapped = jax.shard_map(
      f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False
    )
  else:
    from jax.experimental.shard_map import shard_map as legacy  # noqa: PLC0415

    mapped = legacy(
      f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False
    )
  explicit = jax.sharding.AxisType.Explicit in getattr(mesh, "axis_types", ())
  if not explicit:
    return mapped

  def resharded(*args):
    return mapped(
      *(
        jax.reshard(x, jax.sharding.NamedSharding(mesh, spec))
        for x, spec in zip(args, in_specs)
      )
    )

  return resharded


def check_mesh_axes(op: str, mesh, axes: dict) -> None:
  """Raises unless every size is divisible by its mesh axes' device count.

  Args:
    op: the wrapper's name.
    mesh: a `jax.sharding.Mesh`.
    axes: {f"{array}.shape[i]": (size, mesh axis name | tuple | None)}.
  """
  for what, (size, names) in axes.items():
    if names is None:
      continue
    names = (names,) if isinstance(names, str) else tuple(names)
    unknown = [n for n in names if n not in mesh.shape]
    if unknown:
      raise ValueError(
        f"{op}: mesh axes {unknown} not in the mesh {dict(mesh.shape)}"
      )
    count = int(np.prod([mesh.shape[n] for n in names]))
    if size % count:
      raise ValueError(
        f"{op}: {what}={size} is not divisible by the "
        f"{count} devices of mesh axes {names}"
      )
