"""init_distributed, process_batch_indices and global_batch.

What needs no cluster runs here (no configuration, bad settings, an
unreachable coordinator, the per-process indices, one-process batches).
Joining a cluster must happen before JAX starts its backends, so it runs
in fresh children of this file (`python distributed_test.py --child
MODE`): a one-process cluster for idempotency, and two processes x 4 CPU
devices on localhost whose training step must equal one process with 8
devices.
"""

import socket
import sys
import time

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P
from tests.jaxexit.sharding.device_children import child_env, run_children
from tests.tiers import slow

from jaxexit import models, sharding
from jaxexit.data.batching import shuffled_batch_indices  # noqa: E402
from jaxexit.models.llama_weights import LLAMA_CONFIGS  # noqa: E402
from jaxexit.sharding.distributed import (  # noqa: E402
  ENV_COORDINATOR,
  ENV_NUM_PROCESSES,
  ENV_PROCESS_ID,
  Cluster,
)
from jaxexit.sharding.logical import path_str  # noqa: E402
from jaxexit.train import make_train_step, split_train_state  # noqa: E402
from jaxexit.train.lm import causal_lm_loss  # noqa: E402

ENV_NAMES = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)
# What JAX's auto-detection reads: a child must see no cluster but ours.
DETECTED = (
  "JAX_COORDINATOR_ADDRESS",
  "KUBERNETES_SERVICE_HOST",
  "OMPI_MCA_orte_hnp_uri",
  "SLURM_JOB_ID",
  "TPU_WORKER_HOSTNAMES",
)
NUM_EXAMPLES, BATCH, LENGTH = 40, 16, 12


def _free_port() -> int:
  """A localhost port nothing listens on (it stays closed until used)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture
def no_cluster_env(monkeypatch):
  for name in ENV_NAMES:
    monkeypatch.delenv(name, raising=False)


def test_no_configuration_is_a_no_op_twice(no_cluster_env):
  assert sharding.init_distributed() is None
  assert sharding.init_distributed() is None
  assert not jax.distributed.is_initialized()
  assert sharding.is_main_process()


def test_unreachable_coordinator_raises_naming_address(monkeypatch):
  port = _free_port()
  monkeypatch.setenv(ENV_NUM_PROCESSES, "2")  # the environment fills in
  monkeypatch.setenv(ENV_PROCESS_ID, "1")
  start = time.monotonic()
  with pytest.raises(
    TimeoutError,
    match=rf"process 1 of 2 could not reach the coordinator at "
    rf"127\.0\.0\.1:{port}.*{ENV_COORDINATOR}=host:port",
  ):
    sharding.init_distributed(f"127.0.0.1:{port}", timeout_s=1)
  assert time.monotonic() - start < 10
  assert not jax.distributed.is_initialized()


@pytest.mark.parametrize(
  "args, env, match",
  [
    (("127.0.0.1:1234",), {}, r"set \['num_processes', 'process_id'\]"),
    (("127.0.0.1:1234", 2, 2), {}, r"process_id=2 must be in \[0, 2\)"),
    (("127.0.0.1:1234", 0, 0), {}, r"num_processes=0 must be >= 1"),
    (("localhost", 2, 0), {}, r"'localhost' is not 'host:port'"),
    ((), {ENV_NUM_PROCESSES: "two"}, r"JAXEXIT_NUM_PROCESSES='two' is not"),
  ],
)
def test_bad_settings_raise_naming_them(
  no_cluster_env, monkeypatch, args, env, match
):
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  with pytest.raises(ValueError, match=match):
    sharding.init_distributed(*args, timeout_s=1)


@pytest.mark.parametrize("step", [0, 3, 7])
def test_process_blocks_make_the_one_process_batch(step):
  args = (step, NUM_EXAMPLES, BATCH, 5)
  blocks = [
    sharding.process_batch_indices(*args, process_index=i, process_count=2)
    for i in range(2)
  ]
  assert [len(b) for b in blocks] == [BATCH // 2] * 2
  np.testing.assert_array_equal(
    np.concatenate(blocks), shuffled_batch_indices(*args)
  )
  np.testing.assert_array_equal(  # this process: the only one
    sharding.process_batch_indices(*args), shuffled_batch_indices(*args)
  )
  with pytest.raises(ValueError, match="batch_size=16 is not divisible"):
    sharding.process_batch_indices(*args, process_index=0, process_count=3)
  with pytest.raises(ValueError, match=r"process_index=2 must be in \[0, 2\)"):
    sharding.process_batch_indices(*args, process_index=2, process_count=2)


def test_global_batch_on_one_process_is_the_local_batch():
  mesh = sharding.make_mesh()
  local = {"tokens": np.arange(8 * 3).reshape(8, 3), "label": np.arange(8)}
  batch = sharding.global_batch(local, mesh)
  for name, x in batch.items():
    np.testing.assert_array_equal(np.asarray(x), local[name])
    assert x.sharding.spec == P(("data", "fsdp"))
  with pytest.raises(ValueError, match="one common leading size b"):
    sharding.global_batch({"a": np.zeros(8), "b": np.zeros(4)}, mesh)
  with pytest.raises(ValueError, match=r"mesh axis \['model'\]"):
    sharding.global_batch(local, mesh, "model")


def _child_env(devices: int, **extra: str) -> dict:
  """A child's environment without any cluster settings of this one."""
  cluster = lambda k: k in ENV_NAMES + DETECTED or k.startswith("SLURM_")  # noqa: E731
  return child_env(devices, cluster, **extra)


def _run_children(envs: list[dict], *args: str, timeout: float = 300):
  return run_children(__file__, envs, *args, timeout=timeout)


def test_joined_cluster_is_idempotent_and_conflicts_raise():
  address = f"127.0.0.1:{_free_port()}"
  _run_children([_child_env(1)], "idempotent", address)


def _idempotent_child(address: str) -> None:
  assert sharding.init_distributed(auto=True) is None  # no cluster found
  cluster = sharding.init_distributed(address, 1, 0, timeout_s=60)
  assert cluster == Cluster(address, 1, 0)
  assert jax.distributed.is_initialized()
  assert sharding.init_distributed(address, 1, 0) == cluster
  assert sharding.init_distributed() == cluster
  try:
    sharding.init_distributed(address, 2, 0)
  except ValueError as e:
    message = str(e)
    assert "asked for Cluster(" in message and f"joined {cluster}" in message
    assert "differ in ['num_processes']" in message, message
  else:
    raise AssertionError("a conflicting init_distributed did not raise")
  assert jax.process_count() == 1 and sharding.is_main_process()


def _train_child(out: str) -> None:
  """One AdamW step of a tiny Llama on a (data 2, fsdp 2, tensor 2) mesh.

  The cluster comes from the environment (none: one process); process 0
  writes the loss and every parameter after the step to `out` (.npz).
  """
  sharding.init_distributed(timeout_s=120)
  assert jax.device_count() == 8, jax.devices()
  mesh = sharding.make_mesh("data=2,fsdp=2,tensor=2")
  config = LLAMA_CONFIGS["tiny"]
  data = np.random.default_rng(0).integers(
    0, config.vocab_size, (NUM_EXAMPLES, LENGTH), dtype=np.int32
  )
  indices = sharding.process_batch_indices(1, NUM_EXAMPLES, BATCH, seed=3)
  assert len(indices) == BATCH // jax.process_count()
  batch = sharding.global_batch({"tokens": data[indices]}, mesh)
  assert batch["tokens"].shape == (BATCH, LENGTH)
  if jax.process_count() == 2:  # process 0's devices last: they hold block 1
    flipped = sharding.make_mesh(
      "data=2,fsdp=2,tensor=2", devices=jax.devices()[::-1]
    )
    try:
      sharding.global_batch({"tokens": data[indices]}, flipped)
    except ValueError as e:
      held = (8, 15) if jax.process_index() == 0 else (0, 7)
      assert "devices hold rows {}..{}".format(*held) in str(e), e
    else:
      raise AssertionError("a mesh out of process order did not raise")
  graphdef, state = split_train_state(
    models.LlamaLM(config, rngs=nnx.Rngs(0)), optax.adamw(1e-2)
  )
  state = sharding.shard_state(state, mesh, family="llama")
  with jax.set_mesh(mesh):
    state, metrics = make_train_step(causal_lm_loss)(
      graphdef, state, batch, jax.random.key(0)
    )
  params = multihost_utils.process_allgather(state[0], tiled=True)
  if sharding.is_main_process():
    np.savez(
      out,
      loss=float(metrics["loss"]),
      **{
        path_str(p): np.asarray(x)
        for p, x in jax.tree_util.tree_leaves_with_path(params)
      },
    )
  print(f"process {jax.process_index()}: loss {float(metrics['loss'])}")


@slow
def test_two_processes_train_like_one_process_with_8_devices(tmp_path):
  address = f"127.0.0.1:{_free_port()}"
  multi, single = (str(tmp_path / f"{n}.npz") for n in ("multi", "one"))
  _run_children(
    [
      _child_env(4, **dict(zip(ENV_NAMES, (address, "2", str(i)))))
      for i in range(2)
    ],
    "train",
    multi,
  )
  _run_children([_child_env(8)], "train", single)
  with np.load(multi) as a, np.load(single) as b:
    assert sorted(a) == sorted(b) and len(a) > 10, sorted(a)
    diffs = {k: float(np.max(np.abs(a[k] - b[k]))) for k in a}
  print(f"max |2 processes - 1 process|: {max(diffs.values()):.2e} {diffs}")
  assert max(diffs.values()) < 1e-5, diffs
  assert diffs["loss"] < 1e-5


if __name__ == "__main__" and "--child" in sys.argv:
  mode, arg = sys.argv[sys.argv.index("--child") + 1 :]
  jax.config.update("jax_numpy_rank_promotion", "raise")
  {"idempotent": _idempotent_child, "train": _train_child}[mode](arg)
  print("CHILD OK")
