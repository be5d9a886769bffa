"""`train()` on a mesh: placement, equality with one device, kill/resume.

On one device the mesh path must train exactly like `mesh=None`. The
8-device child (`_child_main`, run as a script with
`XLA_FLAGS=--xla_force_host_platform_device_count=8`) trains a tiny
Llama, LLaVA and Mamba for 3 steps on mesh (data 2, fsdp 2, tensor 2)
and on one device: every parameter keeps its rule's spec and the two
runs agree to 1e-5. `sharded_job.py` is killed with SIGKILL mid-run on
8 devices, resumed, and its checkpoint restored onto 4 devices.
"""

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from etils import epath
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
from jaxexit.train import loop  # noqa: E402
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


def _saved_specs(workdir):
  """`{path: partition spec}` of the train state in the newest checkpoint
  (orbax's metadata: what each process wrote)."""
  ckpt_dir = os.path.join(workdir, loop.CHECKPOINT_DIR)
  step = max(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
  path = epath.Path(ckpt_dir) / str(step) / "default"
  tree = ocp.StandardCheckpointHandler().metadata(path).tree["state"]
  specs = {}
  for keys, meta in jax.tree_util.tree_leaves_with_path(tree):
    name = path_str(keys).removesuffix("/value")
    specs[name] = tuple(meta.sharding.partition_spec)
  return specs


def _check_saved_specs(specs, family):
  """Both Adam moments of every parameter (and its master copy) were saved
  in the parameter's spec."""
  for param in (n for n in specs if n.startswith("0/")):
    tail = param.removeprefix("0/")
    followers = [
      n
      for n in specs
      if n.startswith("1/") and n.endswith(f"/{tail}") and n != param
    ]
    assert len(followers) >= 2, (family, param, followers)
    for name in followers:
      assert specs[name] == specs[param], (family, name, specs[param])


def _run(family, mesh, precision=None):
  """3 steps of `train()`: (losses, model, saved specs on a mesh)."""
  loss_fn = state_test._llava_loss if family == "llava" else causal_lm_loss
  model = state_test._model(family)
  if precision is not None:
    cfg = dataclasses.replace(model.cfg, **precision.model_overrides())
    model = type(model)(cfg, rngs=nnx.Rngs(0))
  batches = state_test._batches(family, model)
  with tempfile.TemporaryDirectory() as workdir:
    model, _ = train.train(
      model,
      optax.adamw(1e-3),
      loss_fn,
      lambda step: batches[step],
      num_steps=3,
      workdir=workdir,
      log_every=1,
      progress=False,
      mesh=mesh,
      precision=precision,
    )
    rows = metrics_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    specs = None if mesh is None else _saved_specs(workdir)
  return [r["loss"] for r in rows], model, specs


def _max_diff(model_a, model_b):
  return max(
    float(np.max(np.abs(np.float32(a) - np.float32(b))))
    for a, b in zip(_params(model_a), _params(model_b))
  )


def _child_main() -> None:
  """Runs in the 8-device child: train(mesh) == train(None), 3 steps."""
  assert jax.device_count() == 8, jax.devices()
  mesh = sharding.make_mesh("data=2,fsdp=2,tensor=2")
  for family in ("llama", "llava", "mamba"):
    loss_1, model_1, _ = _run(family, None)
    loss_8, model_8, specs = _run(family, mesh)
    _check_model_specs(model_8, family)
    _check_saved_specs(specs, family)
    diff = _max_diff(model_1, model_8)
    np.testing.assert_allclose(loss_8, loss_1, rtol=1e-5, atol=1e-5)
    assert diff < 1e-5, (family, diff)
    print(f"CHILD {family} losses {loss_1} max |params diff| {diff:.2e}")
  # bfloat16 with a float32 master copy and remat, on the mesh.
  bf16 = dataclasses.replace(train.PRECISIONS["bf16"], remat="full")
  loss_1, model_1, _ = _run("llama", None, bf16)
  loss_8, model_8, specs = _run("llama", mesh, bf16)
  _check_model_specs(model_8, "llama")
  _check_saved_specs(specs, "llama")
  assert any("/master/" in name for name in specs)
  np.testing.assert_allclose(loss_8, loss_1, rtol=1e-3)
  diff = _max_diff(model_1, model_8)
  assert diff < 1e-2, diff  # a bfloat16 step at |w| ~ 1 is 2^-7
  print(f"CHILD llama bf16 losses {loss_1} / {loss_8} params diff {diff:.2e}")
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
  proc.communicate()  # reaps it and closes its pipe
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
