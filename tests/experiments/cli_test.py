"""experiments.cli's device flags: --mesh, --distributed, process 0 writes.

The mesh checks run this file again as an 8-device child process
(`tests.jaxexit.sharding.device_children`); the rest run on one device.
"""

import argparse
import sys

import jax
import numpy as np
import pytest

from experiments import cli
from jaxexit import results_store
from tests.jaxexit.sharding.device_children import child_env, run_children
from tests.tiers import slow


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser()
  parser.add_argument("--no-progress", action="store_true")
  cli.add_device_flags(parser)
  return parser


def test_defaults_are_every_device_on_data_and_one_process():
  args = _parser().parse_args([])
  assert args.mesh is None and args.distributed == "off"
  devices = cli.setup_devices(args)
  if len(jax.devices()) == 1:
    assert devices.mesh is None  # the single-device path, unchanged
  assert devices.main
  args = _parser().parse_args(
    ["--mesh", "data=2, fsdp=-1", "--distributed", "off"]
  )
  assert args.mesh == {"data": 2, "fsdp": -1}


@pytest.mark.parametrize(
  "value, message",
  [
    ("data=2,pipeline=4", r"unknown axis \['pipeline'\]"),
    ("data=two", "'data=two' .* is not axis=size"),
    ("data=0,fsdp=2", r"sizes \['data=0'\] must be >= 1 or -1"),
    ("data=2,data=2", "'data' is given twice"),
  ],
)
def test_bad_mesh_flag_names_the_value(value, message, capsys):
  with pytest.raises(SystemExit):
    _parser().parse_args(["--mesh", value])
  assert "--mesh" in capsys.readouterr().err
  with pytest.raises(argparse.ArgumentTypeError, match=message):
    cli.mesh_axes(value)


def test_bad_distributed_flag_is_refused(capsys):
  with pytest.raises(SystemExit):
    _parser().parse_args(["--distributed", "maybe"])
  assert "'maybe'" in capsys.readouterr().err


def test_mesh_that_does_not_fit_the_devices_names_both():
  n = len(jax.devices())
  args = _parser().parse_args(["--mesh", f"data={n + 1}"])
  with pytest.raises(ValueError, match=f"--mesh: .* not to the {n} device"):
    cli.setup_devices(args)


def test_no_mesh_leaves_batches_alone():
  batch = {"x": np.ones((3, 2))}
  assert cli.shard_rows(batch, None) is batch
  out = cli.to_host({"y": jax.numpy.arange(3)})
  assert isinstance(out["y"], np.ndarray) and out["y"].tolist() == [0, 1, 2]


def test_only_process_0_logs_locks_and_shows_progress(tmp_path, monkeypatch):
  args = _parser().parse_args([])
  assert cli.progress(args) is None
  assert cli.progress(_parser().parse_args(["--no-progress"])) is False
  cli.Log(tmp_path / "main" / "log.txt")("hello", 1)
  assert (tmp_path / "main" / "log.txt").read_text() == "hello 1\n"
  with cli.output_dir(tmp_path / "held"):
    assert (tmp_path / "held" / results_store.DIR_LOCK).exists()
    with pytest.raises(results_store.OutputLocked):
      with cli.output_dir(tmp_path / "held"):
        pass

  monkeypatch.setattr(cli.sharding, "is_main_process", lambda: False)
  assert not cli.setup_devices(args).main
  assert cli.progress(args) is False
  cli.Log(tmp_path / "other" / "log.txt")("hello")
  with cli.output_dir(tmp_path / "held") as out:  # no lock taken
    assert out == tmp_path / "held"
  assert not (tmp_path / "other").exists()


def _child_main() -> None:
  """8 devices: the mesh flag builds the mesh, rows split or replicate;
  `--distributed auto` with no cluster configured is one process."""
  from jax.sharding import PartitionSpec as P

  args = _parser().parse_args(
    ["--mesh", "data=2,fsdp=2,tensor=2", "--distributed", "auto"]
  )
  mesh = cli.setup_devices(args).mesh  # first: before any JAX computation
  assert jax.process_count() == 1
  cli.setup_devices(args)  # a second auto in the same process is a no-op
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  default = cli.setup_devices(_parser().parse_args([])).mesh
  assert dict(default.shape) == {"data": 8, "fsdp": 1, "tensor": 1}

  x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
  split = cli.shard_rows({"x": x, "y": x[:, 0]}, mesh)
  assert split["x"].sharding.spec == P(("data", "fsdp"))
  assert len(split["x"].addressable_shards[0].data) == 2  # 8 rows / 4
  seeds = cli.shard_rows(x[:2], mesh, "data")
  assert seeds.sharding.spec == P("data")
  odd = cli.shard_rows(x[:3], mesh)  # 3 rows on 4 devices: replicated
  assert odd.sharding.is_fully_replicated
  np.testing.assert_array_equal(cli.to_host(split)["x"], x)
  np.testing.assert_array_equal(cli.to_host(odd), x[:3])
  print("CHILD OK")


@slow
def test_mesh_flag_and_row_sharding_in_8_device_child():
  cluster = (
    "JAXEXIT_COORDINATOR",
    "JAXEXIT_NUM_PROCESSES",
    "JAXEXIT_PROCESS_ID",
  )
  env = child_env(8, drop=lambda k: k in cluster)
  out = run_children(__file__, [env], timeout=180)[0]
  assert out.count("batch of 3 rows: not divisible") == 1


if __name__ == "__main__" and "--child" in sys.argv:
  _child_main()
