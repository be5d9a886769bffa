"""Tests of the shared training loop, including kill-and-resume."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxexit import train as train_lib
from jaxexit.train import loop
from jaxexit.train import metrics as metrics_lib
from tests.jaxexit.train import resume_job
from tests.tiers import slow

JOB = os.path.join(os.path.dirname(__file__), "resume_job.py")
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "../../.."))


def _params(model):
  return [np.asarray(x) for x in jax.tree.leaves(model)]


def _train(workdir, num_steps, **kw):
  model, tx = resume_job.build()
  kw.setdefault("log_every", 2)
  return loop.train(
    model,
    tx,
    resume_job.loss_fn,
    resume_job.make_batch_fn(0.0),
    num_steps=num_steps,
    workdir=workdir,
    seed=7,
    progress=False,
    **kw,
  )


@slow
def test_continuing_a_run_equals_one_long_run(tmp_path):
  a, b = tmp_path / "a", tmp_path / "b"
  _train(a, 12, checkpoint_every=4)
  # num_steps is part of the fingerprint: extending a run is a knowing
  # force_resume (this schedule's total_steps does not depend on it).
  model_a, metrics_a = _train(a, 20, checkpoint_every=4, force_resume=True)
  model_b, metrics_b = _train(b, 20, checkpoint_every=4)
  assert metrics_a == metrics_b and set(metrics_a) >= {"loss", "grad_norm"}
  for x, y in zip(_params(model_a), _params(model_b)):
    assert np.array_equal(x, y)
  assert (a / "metrics.jsonl").read_bytes() == (
    b / "metrics.jsonl"
  ).read_bytes()
  steps = [r["step"] for r in metrics_lib.read_metrics(a / "metrics.jsonl")]
  assert steps == list(range(2, 21, 2))
  # A finished run restarted does nothing and returns the final model.
  model_c, metrics_c = _train(a, 20, checkpoint_every=4)
  assert metrics_c == {}
  for x, y in zip(_params(model_c), _params(model_b)):
    assert np.array_equal(x, y)


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(num_steps=0), "num_steps=0"),
    (dict(num_steps=5, checkpoint_every=0), "checkpoint_every=0"),
    (dict(num_steps=5, log_every=-2), "log_every=-2"),
  ],
)
def test_bad_arguments(tmp_path, kwargs, match):
  with pytest.raises(ValueError, match=match):
    _train(tmp_path, **kwargs)


@slow
def test_other_seed_in_same_workdir_raises(tmp_path):
  _train(tmp_path, 4, checkpoint_every=2)
  model, tx = resume_job.build()
  with pytest.raises(train_lib.FingerprintMismatch) as e:
    loop.train(
      model,
      tx,
      resume_job.loss_fn,
      resume_job.make_batch_fn(0.0),
      num_steps=4,
      workdir=tmp_path,
      seed=8,
      progress=False,
    )
  assert e.value.differences == [("seed", 7, 8)]


def _job(workdir, *extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  return subprocess.Popen(
    [
      sys.executable,
      JOB,
      os.fspath(workdir),
      "--num-steps",
      "60",
      "--checkpoint-every",
      "5",
      *extra,
    ],
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def _wait_for_checkpoint(proc, ckpt_dir, min_step, timeout=60.0):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      raise AssertionError(f"job exited early: {proc.communicate()[1]}")
    steps = (
      [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()]
      if (os.path.isdir(ckpt_dir))
      else []
    )
    if max(steps, default=0) >= min_step:
      return
    time.sleep(0.02)
  raise AssertionError(f"no checkpoint >= {min_step} after {timeout} s")


@slow
def test_sigkill_and_resume_equals_uninterrupted_run(tmp_path):
  ref, killed = tmp_path / "ref", tmp_path / "killed"
  ref_proc = _job(ref)
  proc = _job(killed, "--sleep", "0.04")
  _wait_for_checkpoint(proc, killed / "checkpoints", min_step=10)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  done = metrics_lib.read_metrics(killed / "metrics.jsonl")
  assert done and done[-1]["step"] < 60, "the run was not killed mid-run"
  assert not (killed / "final.npz").exists()

  out, err = _job(killed).communicate(timeout=120)
  assert "start_step=" in out, err
  start = int(out.split("start_step=")[1].split()[0])
  assert 10 <= start < 60
  out_ref, err_ref = ref_proc.communicate(timeout=120)
  assert ref_proc.returncode == 0, err_ref

  final, final_ref = (np.load(d / "final.npz") for d in (killed, ref))
  assert sorted(final.files) == sorted(final_ref.files)
  assert any("opt_state" in k for k in final.files)
  for k in final.files:
    assert np.array_equal(final[k], final_ref[k]), k
  assert int(final["step"]) == 60
  assert (killed / "metrics.jsonl").read_bytes() == (
    ref / "metrics.jsonl"
  ).read_bytes()


@slow
def test_sigkill_during_a_save_resumes_from_the_previous_step(tmp_path):
  """Killed at the commit of step 20: that step is never restored, the
  rerun starts at 15 and ends bit-identical to an uninterrupted run."""
  ref, killed = tmp_path / "ref", tmp_path / "killed"
  ref_job = _job(ref)
  ref_job.communicate(timeout=120)
  assert ref_job.returncode == 0
  proc = _job(killed, "--kill-in-save", "20")
  proc.communicate(timeout=120)
  assert proc.returncode == -signal.SIGKILL
  leftovers = os.listdir(killed / "checkpoints")
  assert "20" not in leftovers and "15" in leftovers, leftovers
  out, err = _job(killed).communicate(timeout=120)
  assert "start_step=15" in out, (out, err)
  final, final_ref = (np.load(d / "final.npz") for d in (killed, ref))
  assert set(final) == set(final_ref)
  for name in final_ref:
    np.testing.assert_array_equal(final[name], final_ref[name], err_msg=name)
