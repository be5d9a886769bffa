"""`train()` on a mesh: placement, equality with one device, kill/resume.

On one device the mesh path must train exactly like `mesh=None`. The
8-device child (`_child_main`, run as a script with
`XLA_FLAGS=--xla_force_host_platform_device_count=8`) trains a tiny
Llama, LLaVA and Mamba for 3 steps on mesh (data 2, fsdp 2, tensor 2)
and on one device: every parameter keeps its rule's spec and the two
runs agree to 1e-5. `sharded_job.py` is killed with SIGKILL mid-run on
8 devices, resumed, and its checkpoint restored onto 4 devices.
"""

import os
import signal
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import PartitionSpec as P

from tests.jaxexit.sharding import state_test
from tests.jaxexit.sharding.device_children import child_env, run_children
from tests.jaxexit.train import resume_job
from tests.tiers import slow

if __name__ == "__main__":  # The child checks shapes like conftest.
  from jaxtyping import install_import_hook

  install_import_hook(["jaxexit"], "beartype.beartype")

from jaxexit import sharding, train  # noqa: E402
from jaxexit.sharding.logical import path_str  # noqa: E402
from jaxexit.train import metrics as metrics_lib  # noqa: E402
from jaxexit.train.lm import causal_lm_loss  # noqa: E402

JOB = os.path.join(os.path.dirname(__file__), "sharded_job.py")


def _params(model):
  return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model))]


def _train_mlp(workdir, mesh):
  model, tx = resume_job.build()
  model, _ = train.train(
    model,
    tx,
    resume_job.loss_fn,
    resume_job.make_batch_fn(0.0),
    num_steps=3,
    workdir=workdir,
    seed=7,
    progress=False,
    mesh=mesh,
  )
  return model


@slow
def test_one_device_meshes_train_like_no_mesh(tmp_path):
  """The 3-axis mesh and the 1-D "data" mesh (whose rules drop fsdp and
  tensor); the MLP fits no family, so its state is replicated (logged)."""
  reference = _params(_train_mlp(tmp_path / "none", None))
  for name, mesh in (
    ("mesh", sharding.make_mesh()),
    ("data", sharding.data_parallel_mesh()),
  ):
    model = _train_mlp(tmp_path / name, mesh)
    for x, y in zip(_params(model), reference):
      np.testing.assert_array_equal(x, y)
    log = (tmp_path / name / "events.log").read_text()
    assert "train state is replicated on the mesh" in log, log


def _check_model_specs(model, family):
  """Every parameter's spec is its rule's (all sizes divide the mesh)."""
  state = nnx.state(model)
  axes = sharding.logical_axes(state, family)
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    name = path_str(path)
    want = state_test._expected_spec(axes[name]) if name in axes else P()
    assert leaf.sharding.spec == want, (family, name, leaf.sharding.spec)
    assert len(leaf.sharding.device_set) == 8, (family, name)


def _child_main() -> None:
  """Runs in the 8-device child: train(mesh) == train(None), 3 steps."""
  assert jax.device_count() == 8, jax.devices()
  mesh = sharding.make_mesh("data=2,fsdp=2,tensor=2")
  for family in ("llama", "llava", "mamba"):
    loss_fn = state_test._llava_loss if family == "llava" else causal_lm_loss
    batches = state_test._batches(family, state_test._model(family))
    runs = []
    for m in (None, mesh):
      with tempfile.TemporaryDirectory() as workdir:
        model, _ = train.train(
          state_test._model(family),
          optax.adamw(1e-3),
          loss_fn,
          lambda step: batches[step],
          num_steps=3,
          workdir=workdir,
          log_every=1,
          progress=False,
          mesh=m,
        )
        rows = metrics_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))
      runs.append(([r["loss"] for r in rows], model))
    (loss_1, model_1), (loss_8, model_8) = runs
    _check_model_specs(model_8, family)
    diff = max(
      float(np.max(np.abs(a - b)))
      for a, b in zip(_params(model_1), _params(model_8))
    )
    np.testing.assert_allclose(loss_8, loss_1, rtol=1e-5, atol=1e-5)
    assert diff < 1e-5, (family, diff)
    print(f"CHILD {family} losses {loss_1} max |params diff| {diff:.2e}")
  print("CHILD OK")


@slow
def test_sharded_train_matches_one_device_in_8_device_child():
  (out,) = run_children(__file__, [child_env(8)], timeout=900)
  print(out)


def _job(workdir, devices, *args):
  return subprocess.Popen(
    [sys.executable, JOB, os.fspath(workdir), *args],
    env=child_env(devices),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _finish(proc, timeout=600):
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out
  return out


def _wait_for_step(proc, ckpt_dir, step, timeout=300):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    assert proc.poll() is None, proc.communicate()[0]
    names = os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []
    if max((int(d) for d in names if d.isdigit()), default=0) >= step:
      return
    time.sleep(0.05)
  raise AssertionError(f"no checkpoint >= {step} after {timeout} s")


def _assert_same_npz(a, b):
  final, final_ref = np.load(a), np.load(b)
  assert sorted(final.files) == sorted(final_ref.files)
  assert any("opt_state" in k for k in final.files)
  for k in final.files:
    np.testing.assert_array_equal(final[k], final_ref[k], err_msg=k)


@slow
def test_sharded_sigkill_resume_and_restore_on_4_devices(tmp_path):
  ref, killed = tmp_path / "ref", tmp_path / "killed"
  _finish(_job(ref, 8))
  proc = _job(killed, 8, "--sleep", "0.3")
  _wait_for_step(proc, killed / "checkpoints", 8)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  done = metrics_lib.read_metrics(killed / "metrics.jsonl")
  assert done and done[-1]["step"] < 24, "the run was not killed mid-run"
  assert not (killed / "final.npz").exists()

  out = _finish(_job(killed, 8))
  start = int(out.split("start_step=")[1].split()[0])
  assert 8 <= start < 24, out
  assert "restored_on=8 devices" in out, out
  _assert_same_npz(killed / "final.npz", ref / "final.npz")
  assert (killed / "metrics.jsonl").read_bytes() == (
    ref / "metrics.jsonl"
  ).read_bytes()

  # The 8-device checkpoint onto a 4-device mesh (data 2, fsdp 2).
  os.replace(ref / "final.npz", tmp_path / "final_8.npz")
  out = _finish(_job(ref, 4, "--mesh", "data=2,fsdp=2", "--dump-only"))
  assert "restored_on=4 devices" in out, out
  _assert_same_npz(ref / "final.npz", tmp_path / "final_8.npz")


if __name__ == "__main__" and "--child" in sys.argv:
  jax.config.update("jax_numpy_rank_promotion", "raise")
  _child_main()
