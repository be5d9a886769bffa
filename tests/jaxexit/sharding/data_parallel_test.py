"""Tests of the data-parallel helpers (8 fake CPU devices in a subprocess).

`XLA_FLAGS=--xla_force_host_platform_device_count=8` must be set before jax
is imported, so the multi-device checks run this file as a script in a
child process (`_child_main`) and the test asserts on its exit status.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from tests.jaxexit.sharding.device_children import child_env, run_children
from tests.tiers import slow

if __name__ == "__main__":  # The 8-device child checks shapes like conftest.
  from jaxtyping import install_import_hook

  install_import_hook(["jaxexit"], "beartype.beartype")

from jaxexit import sharding  # noqa: E402


def test_constrain_without_spec_is_identity():
  x = jnp.ones((2, 3))
  assert sharding.constrain(x, None) is x


def test_single_device_mesh_and_errors():
  mesh = sharding.data_parallel_mesh(1)
  assert mesh.axis_names == ("data",) and mesh.shape["data"] == 1
  batch = sharding.shard_batch({"x": np.ones((3, 2))}, mesh)
  assert batch["x"].sharding.spec == P("data")
  with pytest.raises(ValueError, match="num_devices=0"):
    sharding.data_parallel_mesh(0)
  with pytest.raises(ValueError, match="num_devices=999"):
    sharding.data_parallel_mesh(999)
  with pytest.raises(ValueError, match="batch size None"):
    sharding.shard_batch({"x": np.float32(1.0)}, mesh)
  with pytest.raises(ValueError, match=r"mesh axis \['fsdp'\] of axis="):
    sharding.shard_batch({"x": np.ones((3, 2))}, mesh, ("data", "fsdp"))
  mesh = sharding.make_mesh()
  batch = sharding.shard_batch({"x": np.ones((3, 2))}, mesh, ("data", "fsdp"))
  assert batch["x"].sharding.spec == P(("data", "fsdp"))


def test_time_data_parallel_on_one_device_times_one_row():
  model = nnx.Linear(6, 2, rngs=nnx.Rngs(0))
  dp = sharding.time_data_parallel(
    lambda m, b: m(b), model, jnp.ones((4, 6)), warmup=1, repeats=2
  )
  assert (dp.batch, dp.devices, dp.mesh, dp.speedup) == (4, 1, None, None)
  assert len(dp.one_device.seconds) == 2
  table = dp.markdown().splitlines()
  assert len(table) == 3 and table[2].startswith("| 1 cpu | 4 |"), table


class Mlp(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(6, 32, rngs=rngs)
    self.dropout = nnx.Dropout(0.25)
    self.out = nnx.Linear(32, 2, rngs=rngs)

  def __call__(self, x, rng):
    return self.out(self.dropout(jax.nn.relu(self.hidden(x)), rngs=rng))


def _loss_fn(model, batch, rng):
  pred = model(batch["x"], rng)
  return jnp.mean((pred - batch["y"]) ** 2), {}


def _child_main() -> None:
  """Runs in the 8-device child: sharded step == single-device step."""
  from jaxexit.train import make_train_step, split_train_state  # noqa: PLC0415

  assert jax.device_count() == 8, jax.devices()
  mesh = sharding.data_parallel_mesh()
  x = jax.random.normal(jax.random.key(1), (32, 6))
  batches = [{"x": x + i, "y": x[:, :2] * (i + 1)} for i in range(3)]
  step = make_train_step(_loss_fn)
  results = []
  for sharded in (False, True):
    graphdef, state = split_train_state(Mlp(nnx.Rngs(0)), optax.adam(1e-2))
    if sharded:
      state = sharding.replicate(state, mesh)
    losses = []
    with jax.set_mesh(mesh):
      for i, batch in enumerate(batches):
        if sharded:
          batch = sharding.shard_batch(batch, mesh)
          assert batch["x"].sharding.spec == P("data")
          assert len(batch["x"].sharding.device_set) == 8
          shapes = {s.data.shape for s in batch["x"].addressable_shards}
          assert shapes == {(4, 6)}, shapes
        state, metrics = step(graphdef, state, batch, jax.random.key(i))
        losses.append(np.asarray(metrics["loss"]))
    if sharded:
      for leaf in jax.tree.leaves(state):
        assert leaf.sharding.is_fully_replicated, leaf.sharding
        assert len(leaf.sharding.device_set) == 8
    results.append((np.array(losses), jax.tree.leaves(jax.device_get(state))))
  (loss_1, leaves_1), (loss_8, leaves_8) = results
  np.testing.assert_allclose(loss_8, loss_1, rtol=1e-6, atol=1e-7)
  for a, b in zip(leaves_8, leaves_1):
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
      a, b = jax.random.key_data(a), jax.random.key_data(b)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  try:
    sharding.shard_batch({"x": np.ones((12, 6))}, mesh)
  except ValueError as e:
    assert "batch size 12" in str(e) and "device count 8" in str(e), e
  else:
    raise AssertionError("indivisible batch did not raise")
  mlp = Mlp(nnx.Rngs(0))
  mlp.eval()  # dropout off: both runs must compute the same function
  dp = sharding.time_data_parallel(
    lambda m, b: m(b["x"], None), mlp, {"x": x}, mesh, warmup=1, repeats=2
  )
  assert (dp.batch, dp.devices, dp.device_kind) == (32, 8, "cpu"), dp
  assert dp.mesh is not None and dp.speedup > 0, dp
  assert dp.max_abs_diff < 1e-5, dp.max_abs_diff
  assert "| 8 cpu (mesh axis `data`) | 4 |" in dp.markdown(), dp.markdown()
  print("CHILD OK", loss_1.tolist())


@slow
def test_sharded_step_matches_single_device_in_8_device_child():
  run_children(__file__, [child_env(8)], timeout=180)


if __name__ == "__main__" and "--child" in sys.argv:
  jax.config.update("jax_numpy_rank_promotion", "raise")
  _child_main()
