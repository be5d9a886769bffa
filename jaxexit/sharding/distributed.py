"""Joining a multi-process (multi-host) JAX cluster: `init_distributed`.

One JAX process runs per host (or per GPU); the processes find each other
through a coordinator, process 0, at an address every process is given.
After `jax.distributed.initialize`, `jax.devices()` lists the devices of
every process and a mesh over them spans the hosts (big_vision and
maxtext call it first thing in `main`). Each process then loads only its
own rows of every batch (`jaxexit.sharding.process_data`) and only
process 0 writes files (`is_main_process`).

The cluster comes from, in this order (an argument wins over its
variable):

  * the arguments `coordinator`, `num_processes`, `process_id`;
  * the environment: `JAXEXIT_COORDINATOR` ("host:port" of process 0, the
    same on every process), `JAXEXIT_NUM_PROCESSES`, `JAXEXIT_PROCESS_ID`;
  * with `auto=True`, JAX's own detection of whatever is still unset:
    Cloud TPU VMs and GKE TPU pods (worker number and hostnames from the
    metadata server or `TPU_WORKER_HOSTNAMES`; coordinator port 8482),
    SLURM (`SLURM_JOB_ID`, `SLURM_STEP_NODELIST`, `SLURM_NTASKS`,
    `SLURM_PROCID`, `SLURM_LOCALID`; the first node of the step list is the
    coordinator), Open MPI's `mpirun` (`OMPI_MCA_orte_hnp_uri`,
    `OMPI_COMM_WORLD_SIZE`, `OMPI_COMM_WORLD_RANK`) and Kubernetes
    (`KUBERNETES_SERVICE_HOST`, with the `kubernetes` package). JAX also
    reads `JAX_COORDINATOR_ADDRESS` and `JAX_COORDINATOR_PORT` there.
    Settings given are never replaced, but even without `auto` JAX gives a
    SLURM or MPI task on GPUs only its local GPU (`SLURM_LOCALID`).

With none of these there is one process and `init_distributed` does
nothing, so a script calls it unconditionally. Usage::

  init_distributed()  # before any other JAX call
  mesh = make_mesh("data=-1,tensor=2")  # over the devices of all hosts

  # on each of 2 hosts (or: JAXEXIT_COORDINATOR=10.0.0.1:1234 ...)
  init_distributed("10.0.0.1:1234", num_processes=2, process_id=i)
"""

import logging
import math
import os
import socket
import time
from typing import NamedTuple

import jax

ENV_COORDINATOR = "JAXEXIT_COORDINATOR"
ENV_NUM_PROCESSES = "JAXEXIT_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXEXIT_PROCESS_ID"
DEFAULT_TIMEOUT_S = 300  # jax.distributed.initialize's own default

logger = logging.getLogger(__name__)


class Cluster(NamedTuple):
  """The settings of a cluster; None: not given (left to auto-detection).

  Attributes:
    coordinator: "host:port" of process 0's coordinator service.
    num_processes: processes in the cluster, >= 1.
    process_id: this process, in [0, num_processes).
  """

  coordinator: str | None
  num_processes: int | None
  process_id: int | None


_joined: Cluster | None = None


def _env_int(name: str) -> int | None:
  text = os.environ.get(name)
  if text is None:
    return None
  try:
    return int(text)
  except ValueError:
    raise ValueError(
      f"environment variable {name}={text!r} is not an integer"
    ) from None


def _requested(
  coordinator: str | None, num_processes: int | None, process_id: int | None
) -> Cluster:
  """The arguments, each None filled from its environment variable."""
  return Cluster(
    coordinator if coordinator is not None else os.environ.get(ENV_COORDINATOR),
    num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES),
    process_id if process_id is not None else _env_int(ENV_PROCESS_ID),
  )


def _check(cluster: Cluster, auto: bool) -> None:
  """Raises ValueError naming a missing or bad setting of `cluster`."""
  names = {
    "coordinator": ENV_COORDINATOR,
    "num_processes": ENV_NUM_PROCESSES,
    "process_id": ENV_PROCESS_ID,
  }
  missing = [f for f, v in cluster._asdict().items() if v is None]
  if missing and not auto:
    raise ValueError(
      f"incomplete cluster {cluster}: set {missing} (arguments of "
      f"init_distributed, or {[names[f] for f in missing]}), or pass "
      f"auto=True to let JAX detect them"
    )
  coordinator, num, pid = cluster
  if num is not None and num < 1:
    raise ValueError(f"num_processes={num} must be >= 1")
  if pid is not None and not 0 <= pid < (num or math.inf):
    raise ValueError(f"process_id={pid} must be in [0, {num or 'inf'})")
  if coordinator is not None:
    _host_port(coordinator)


def _host_port(address: str) -> tuple[str, int]:
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(
      f"coordinator address {address!r} is not 'host:port' (e.g. "
      f"'10.0.0.1:1234'; set it with init_distributed(coordinator=...) or "
      f"{ENV_COORDINATOR})"
    )
  return host.strip("[]"), int(port)  # "[::1]:1234" is IPv6 ::1


def _wait_for_coordinator(cluster: Cluster, deadline: float) -> None:
  """Polls the coordinator's port until it accepts a connection.

  JAX's own client aborts the whole process (a C++ fatal error, not an
  exception) when the coordinator does not answer within the timeout, so
  the address is tried here first, where the failure can be an error.
  """
  host, port = _host_port(cluster.coordinator)
  while True:
    try:
      socket.create_connection((host, port), timeout=1.0).close()
      return
    except OSError as e:
      error = e
    if time.monotonic() > deadline:
      break
    time.sleep(0.2)
  raise TimeoutError(
    f"process {cluster.process_id} of {cluster.num_processes} could not "
    f"reach the coordinator at {cluster.coordinator} within the timeout "
    f"({error}). Process 0 must run and listen at that address: pass the "
    f"same init_distributed(coordinator='host:port') on every process, or "
    f"set {ENV_COORDINATOR}=host:port ({ENV_NUM_PROCESSES}, "
    f"{ENV_PROCESS_ID}); raise timeout_s if process 0 starts later"
  )


def init_distributed(
  coordinator: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  auto: bool = False,
  timeout_s: int | float = DEFAULT_TIMEOUT_S,
) -> Cluster | None:
  """Joins the cluster when one is configured; on one process, nothing.

  Call it before anything else touches JAX (`jax.devices()`, an array):
  `jax.distributed.initialize` must run before the backends exist. A
  second call with the same settings (or none) returns the cluster
  already joined. CPU devices keep (or get) gloo collectives over TCP,
  which cross-process CPU computations need.

  Args:
    coordinator: "host:port" of process 0, the same on every process
      (None: `JAXEXIT_COORDINATOR`).
    num_processes: processes in the cluster (None:
      `JAXEXIT_NUM_PROCESSES`).
    process_id: this process, in [0, num_processes) (None:
      `JAXEXIT_PROCESS_ID`).
    auto: let JAX detect the settings still unset (TPU pods, SLURM,
      Open MPI, Kubernetes; see the module docstring); finding no cluster
      is then one process.
    timeout_s: seconds to wait for the coordinator (processes > 0) and for
      every process to join (process 0).

  Returns:
    The settings asked for (None where JAX detected them), or None when
    there is one process.

  Raises:
    ValueError: an incomplete setting without `auto`, a bad one (naming
      it), or settings that differ from those of the cluster already
      joined (naming both).
    TimeoutError: a process > 0 could not reach the coordinator within
      `timeout_s` (naming the address and how to set it). Process 0
      waiting for the others past `timeout_s` is aborted by JAX itself.
  """
  global _joined
  asked = _requested(coordinator, num_processes, process_id)
  if _joined is not None:
    differ = [
      f
      for f, a, j in zip(Cluster._fields, asked, _joined)
      if None not in (a, j) and a != j
    ]
    if differ:
      raise ValueError(
        f"init_distributed asked for {asked}, but this process already "
        f"joined {_joined} (they differ in {differ})"
      )
    return _joined
  if asked == Cluster(None, None, None) and not auto:
    return None
  _check(asked, auto)
  deadline = time.monotonic() + timeout_s
  if asked.coordinator is not None and (asked.process_id or 0) > 0:
    _wait_for_coordinator(asked, deadline)
  if jax.config.jax_cpu_collectives_implementation is None:
    # gloo is JAX's default (0.10 to 0.12); None, set in code, would fail
    # every cross-process computation on CPU devices.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  logger.info("joining the cluster %s (timeout %s s)", asked, timeout_s)
  try:
    jax.distributed.initialize(
      *asked,
      initialization_timeout=max(1, math.ceil(deadline - time.monotonic())),
    )
  except ValueError as e:  # JAX detected no cluster for what is missing
    if not auto:
      raise
    if asked != Cluster(None, None, None):
      raise ValueError(
        f"auto-detection found no cluster to complete {asked}: {e}"
      ) from e
    logger.info("no cluster detected (%s): one process", e)
    return None
  _joined = asked
  return _joined


def is_main_process() -> bool:
  """Whether this is process 0, the one that writes files and shows bars."""
  return jax.process_index() == 0
