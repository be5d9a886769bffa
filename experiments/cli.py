"""Command-line pieces every experiment shares.

Devices: every experiment takes `--mesh data=N,fsdp=M,tensor=K` (default:
every device on "data") and `--distributed auto|off` through
`add_device_flags`, and turns them into a `Devices` with `setup_devices`
first thing in `main`, before any JAX computation. The mesh goes to
`jaxexit.train.train(mesh=...)` and to the evaluation batches
(`shard_rows`); only process 0 (`Devices.main`) takes the output lock
(`output_dir`), logs (`Log`), writes results and plots, and shows progress
bars (`progress`). Usage::

  parser = argparse.ArgumentParser(...)
  add_device_flags(parser)
  args = parser.parse_args(argv)
  devices = setup_devices(args)
  with output_dir(args.out):
    ...
    model, _ = train.train(..., mesh=devices.mesh, progress=progress(args))
    logits = to_host(forward(state, shard_rows(batch, devices.mesh)))
    if devices.main:
      write_results(...)

On one device `Devices.mesh` is None and every run is the single-device
run it was before the flags existed.
"""

import argparse
import contextlib
import dataclasses
import functools
import math
import pathlib
from collections.abc import Callable, Iterator, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from jaxexit import results_store, sharding
from jaxexit.typing import PyTree

DISTRIBUTED = ("auto", "off")
_reported_replicated: set[tuple] = set()


def comma_choices(
  flag: str, allowed: Sequence[str]
) -> Callable[[str], tuple[str, ...]]:
  """An argparse `type` for `all` or a comma list of `allowed` values.

  Args:
    flag: the flag's name, for the error message.
    allowed: the valid values (`all` means every one, in this order).
  """

  def parse(value: str) -> tuple[str, ...]:
    if value == "all":
      return tuple(allowed)
    items = tuple(v.strip() for v in value.split(","))
    bad = [v for v in items if v not in allowed]
    if bad or not items:
      raise argparse.ArgumentTypeError(
        f"{flag} got {bad}; expected 'all' or a comma list of {list(allowed)}"
      )
    return items

  return parse


def seed_list(text: str) -> tuple[int, ...]:
  """`--seeds`: a comma list of training seeds, e.g. "0,1,2" (the presets'
  configs refuse repeated ones)."""
  try:
    return tuple(int(s) for s in text.split(","))
  except ValueError:
    raise ValueError(
      f"--seeds must be a comma list of ints; got {text!r}"
    ) from None


def mesh_axes(text: str) -> dict[str, int]:
  """An argparse `type` for `--mesh`: `{axis: size}` of "data=2,fsdp=2".

  The device count is checked later, by `setup_devices`.
  """
  try:
    axes = sharding.parse_mesh_axes(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(f"--mesh {text!r}: {e}") from None
  unknown = [a for a in axes if a not in sharding.MESH_AXES]
  if unknown:
    raise argparse.ArgumentTypeError(
      f"--mesh {text!r}: unknown axis {unknown}; the axes are "
      f"{sharding.MESH_AXES}"
    )
  bad = [f"{a}={s}" for a, s in axes.items() if s < 1 and s != -1]
  if bad:
    raise argparse.ArgumentTypeError(
      f"--mesh {text!r}: sizes {bad} must be >= 1 or -1 (the rest)"
    )
  return axes


def add_device_flags(parser: argparse.ArgumentParser) -> None:
  """Adds `--mesh` and `--distributed` (read by `setup_devices`)."""
  parser.add_argument(
    "--mesh",
    type=mesh_axes,
    default=None,
    metavar="data=N,fsdp=M,tensor=K",
    help="device mesh: sizes of the axes data, fsdp, tensor (one may be -1, "
    "the rest; axes not named have size 1). Default: every device on data",
  )
  parser.add_argument(
    "--distributed",
    choices=DISTRIBUTED,
    default="off",
    help="auto: join the cluster of processes set by JAXEXIT_COORDINATOR, "
    "JAXEXIT_NUM_PROCESSES, JAXEXIT_PROCESS_ID or detected by JAX (SLURM, "
    "TPU pods, Open MPI) before using any device; off (default): one process",
  )


@dataclasses.dataclass(frozen=True)
class Devices:
  """Where an experiment runs.

  Attributes:
    mesh: the ("data", "fsdp", "tensor") mesh over every device of every
      process; None on one device (the single-device path, unchanged).
    main: whether this is process 0, the one that writes files.
  """

  mesh: Mesh | None
  main: bool


@functools.cache
def _join_cluster() -> None:
  """`init_distributed(auto=True)`, once per process (a second call would
  find the backends already running)."""
  sharding.init_distributed(auto=True)


def setup_devices(args: argparse.Namespace) -> Devices:
  """Joins the cluster (`--distributed auto`) and builds the `--mesh`.

  Call it before anything else touches JAX.

  Raises:
    ValueError: a mesh whose sizes do not multiply to the device count,
      naming both.
  """
  if args.distributed == "auto":
    _join_cluster()
  try:
    mesh = sharding.make_mesh(args.mesh)
  except ValueError as e:
    raise ValueError(f"--mesh: {e}") from None
  main = sharding.is_main_process()
  if main and mesh.size > 1:
    platform = mesh.devices.flat[0].platform
    print(
      f"mesh {dict(mesh.shape)} over {mesh.size} {platform} devices of "
      f"{jax.process_count()} process(es)",
      flush=True,
    )
  return Devices(mesh=mesh if mesh.size > 1 else None, main=main)


@contextlib.contextmanager
def output_dir(out: str | pathlib.Path) -> Iterator[pathlib.Path]:
  """Holds `out`'s lock for the run on process 0 (a second run into it is
  refused); other processes write nothing there and take no lock."""
  if sharding.is_main_process():
    with results_store.lock_output_dir(out) as path:
      yield path
  else:
    yield pathlib.Path(out)


def progress(args: argparse.Namespace) -> bool | None:
  """The `progress=` of the trainers: off with `--no-progress` and on every
  process but 0, else None (a bar on a terminal)."""
  return False if args.no_progress or not sharding.is_main_process() else None


def shard_rows(
  batch: PyTree, mesh: Mesh | None, axes=sharding.DEFAULT_RULES["batch"]
) -> PyTree:
  """An evaluation batch placed with its leading (row) axis split over the
  mesh's `axes` (default: the rules' "batch", ("data", "fsdp")).

  Rows that the axes' devices do not divide (a batch of one, a last short
  batch) are replicated instead, and the decision is printed once per
  shape. With `mesh` None the batch is returned unchanged.

  Args:
    batch: a pytree of arrays [B, ...] with one common B.
    mesh: the run's mesh (`Devices.mesh`), or None.
    axes: the mesh axis or axes that split B.
  """
  if mesh is None:
    return batch
  names = (axes,) if isinstance(axes, str) else tuple(axes)
  devices = math.prod(mesh.shape[a] for a in names)
  leaves = jax.tree.leaves(batch)
  sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
  (size,) = sizes if len(sizes) == 1 else (None,)
  if size is not None and size % devices == 0:
    return sharding.shard_batch(batch, mesh, axes)
  key = (size, names)
  if key not in _reported_replicated and sharding.is_main_process():
    print(
      f"batch of {size} rows: not divisible by the {devices} devices of mesh "
      f"axes {names}; replicated",
      flush=True,
    )
  _reported_replicated.add(key)
  return sharding.replicate(batch, mesh)


def place_model(
  model: nnx.Module, mesh: Mesh | None, family: str | None = None
) -> None:
  """Moves `model`'s arrays onto `mesh`, in place: sharded by `family`'s
  logical axes and the default rules (`jaxexit.sharding.shard_state`), or
  replicated when `family` is None. Nothing when `mesh` is None."""
  if mesh is None:
    return
  state = nnx.state(model)
  nnx.update(
    model,
    sharding.replicate(state, mesh)
    if family is None
    else sharding.shard_state(state, mesh, family=family),
  )


def to_host(tree: PyTree) -> PyTree:
  """Every array of `tree` as a whole numpy array on this host, gathered
  from the other processes where it is not fully addressable."""

  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  return jax.tree.map(get, tree)


class Log:
  """Prints to stdout and appends to `<out>/log.txt`, on process 0 only."""

  def __init__(self, path: pathlib.Path):
    self._file = None
    if sharding.is_main_process():
      path.parent.mkdir(parents=True, exist_ok=True)
      self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115

  def __call__(self, *parts) -> None:
    if self._file is None:
      return
    line = " ".join(str(p) for p in parts)
    print(line, flush=True)
    self._file.write(line + "\n")
    self._file.flush()
