"""Fault injection into resumed runs: changed configs, damaged checkpoints.

Issue 21 defects 1 and 3. Each case asserts the documented outcome: the
named error with its fields, or a resume from the newest good step with
parameters identical to an uninterrupted run. (SIGKILL mid-run and during a
save: `loop_test.py`.)
"""

import os
import pathlib

import jax
import numpy as np
import pytest

from jaxexit import train as train_lib
from jaxexit.train import checkpoint as ckpt_lib
from jaxexit.train import loop
from tests.jaxexit.train import resume_job
from tests.tiers import fast_only, slow

STEPS, EVERY = 20, 5
FP = {
  "method": "pabee",
  "optimizer": {"learning_rate": 1e-2},
  "data": {"task": "toy", "ids": train_lib.fingerprint_array(np.arange(8))},
}


def _params(model):
  return [np.asarray(x) for x in jax.tree.leaves(model)]


def _train(workdir, num_steps=STEPS, *, fingerprint=FP, **kw):
  model, tx = resume_job.build()
  return loop.train(
    model,
    tx,
    resume_job.loss_fn,
    resume_job.make_batch_fn(0.0),
    num_steps=num_steps,
    workdir=workdir,
    seed=7,
    progress=False,
    checkpoint_every=EVERY,
    max_to_keep=None,
    log_every=5,
    fingerprint=fingerprint,
    **kw,
  )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted run: (workdir, final params)."""
  workdir = tmp_path_factory.mktemp("reference")
  model, _ = _train(workdir)
  return workdir, _params(model)


# --- defect 1: a changed configuration never reuses the old checkpoint ---


def test_changed_fingerprint_field_refuses_naming_it(reference, tmp_path):
  workdir = tmp_path / "w"
  _train(workdir, 10)
  changed = {**FP, "optimizer": {"learning_rate": 2e-2}}
  with pytest.raises(train_lib.FingerprintMismatch) as e:
    _train(workdir, 10, fingerprint=changed)
  assert e.value.differences == [("optimizer.learning_rate", 1e-2, 2e-2)]
  assert "--force-resume" in str(e.value) and "fresh" in str(e.value)


def test_changed_step_count_refuses_naming_num_steps(tmp_path):
  _train(tmp_path, 10)
  with pytest.raises(train_lib.FingerprintMismatch) as e:
    _train(tmp_path, 5)  # e.g. --epochs 0.5: fewer derived steps
  assert e.value.differences == [("num_steps", 10, 5)]


def test_changed_data_hash_refuses(tmp_path):
  _train(tmp_path, 5)
  other = {
    **FP,
    "data": {**FP["data"], "ids": train_lib.fingerprint_array(np.arange(1, 9))},
  }
  with pytest.raises(train_lib.FingerprintMismatch, match=r"data\.ids"):
    _train(tmp_path, 5, fingerprint=other)


@slow
def test_force_resume_continues_and_logs_the_fields(
  reference, tmp_path, capsys
):
  ref_dir, ref_params = reference
  _train(tmp_path, 10)
  model, _ = _train(tmp_path, STEPS, force_resume=True)
  out = capsys.readouterr().out
  assert "force_resume" in out and "num_steps" in out
  assert "num_steps" in (tmp_path / loop.EVENTS_FILE).read_text()
  # This schedule does not depend on num_steps: identical to one long run.
  for x, y in zip(_params(model), ref_params):
    np.testing.assert_array_equal(x, y)
  # The new checkpoints carry the new fingerprint: no force needed now.
  assert _train(tmp_path, STEPS)[1] == {}


def test_finished_run_with_same_fingerprint_says_it_reuses(reference, capsys):
  ref_dir, ref_params = reference
  capsys.readouterr()
  model, metrics = _train(ref_dir)
  ckpt_dir = ref_dir / loop.CHECKPOINT_DIR
  assert (
    f"reusing the finished checkpoint at step {STEPS} in {ckpt_dir}"
    in capsys.readouterr().out
  )
  assert metrics == {}
  for x, y in zip(_params(model), ref_params):
    np.testing.assert_array_equal(x, y)


def test_checkpoint_without_fingerprint_resumes_with_warning(
  tmp_path, monkeypatch, capsys
):
  save = ckpt_lib.Checkpointer.save

  def save_without_metadata(self, *args, metadata=None, **kw):
    return save(self, *args, **kw)  # what the loop did before

  monkeypatch.setattr(ckpt_lib.Checkpointer, "save", save_without_metadata)
  _train(tmp_path, 10)
  monkeypatch.undo()
  capsys.readouterr()
  _, metrics = _train(tmp_path, 10)
  assert metrics == {}
  out = capsys.readouterr().out
  assert "has no fingerprint" in out and "warning" in out
  # The seed is still checked through the saved key.
  model, tx = resume_job.build()
  with pytest.raises(train_lib.FingerprintMismatch, match="seed"):
    loop.train(
      model,
      tx,
      resume_job.loss_fn,
      resume_job.make_batch_fn(0.0),
      num_steps=10,
      workdir=tmp_path,
      seed=8,
      progress=False,
      fingerprint=FP,
    )


# --- defect 3: a damaged newest step falls back to the previous one ---


def _garbage_metadata(step_dir: pathlib.Path) -> None:
  (step_dir / "default" / "_METADATA").write_bytes(b"\xff\xfe\x00garbage")


def _truncated_array(step_dir: pathlib.Path) -> None:
  # OCDBT keeps the array bytes in data files under `d/` folders (small
  # arrays inline in the top-level B-tree file, large ones in the
  # per-process files); cut every one of them in half.
  files = [
    p
    for p in (step_dir / "default").rglob("*")
    if p.is_file() and p.parent.name == "d"
  ]
  assert files, "orbax's layout changed: no data files under d/"
  for data in files:
    with open(data, "r+b") as f:
      f.truncate(data.stat().st_size // 2)


def _uncommitted(step_dir: pathlib.Path) -> None:
  for marker in step_dir.rglob(ckpt_lib.COMMIT_MARKER):
    marker.unlink()
  # And a stray newer step folder with no marker at all.
  (step_dir.parent / str(STEPS + EVERY) / "default").mkdir(parents=True)


@pytest.mark.parametrize(
  "damage",
  fast_only([_garbage_metadata, _truncated_array, _uncommitted], _uncommitted),
  ids=["garbage_metadata", "truncated_array", "uncommitted"],
)
def test_damaged_newest_step_resumes_from_previous(
  reference, tmp_path, capsys, damage
):
  ref_dir, ref_params = reference
  _train(tmp_path)
  ckpt_dir = tmp_path / loop.CHECKPOINT_DIR
  damage(ckpt_dir / str(STEPS))
  capsys.readouterr()
  model, metrics = _train(tmp_path)
  out = capsys.readouterr().out
  assert f"skipping checkpoint step {STEPS} in {ckpt_dir}" in out
  assert "not deleted" in out
  assert set(metrics) >= {"loss"}  # steps 16..20 were retrained
  for x, y in zip(_params(model), ref_params):
    np.testing.assert_array_equal(x, y)
  assert (tmp_path / "metrics.jsonl").read_bytes() == (
    ref_dir / "metrics.jsonl"
  ).read_bytes()
  # The damaged step is kept, out of orbax's way; the new step 20 is good.
  assert (ckpt_dir / ckpt_lib.SKIPPED_DIR / str(STEPS)).is_dir()
  assert (
    f"skipping checkpoint step {STEPS}"
    in (tmp_path / loop.EVENTS_FILE).read_text()
  )
  with ckpt_lib.Checkpointer(ckpt_dir) as ckpt:
    assert ckpt.all_steps() == [5, 10, 15, 20]


def test_reasons_name_the_kind_of_damage(tmp_path):
  _train(tmp_path, 10)
  ckpt_dir = tmp_path / loop.CHECKPOINT_DIR
  _garbage_metadata(ckpt_dir / "10")
  (ckpt_dir / "15" / "default").mkdir(parents=True)
  lines = []
  model, tx = resume_job.build()
  _, state = train_lib.split_train_state(model, tx)
  with ckpt_lib.Checkpointer(ckpt_dir) as ckpt:
    restored = ckpt.restore_newest(
      train_lib.abstract_like(state),
      abstract_rng=train_lib.abstract_like(jax.random.key(0)),
      log=lines.append,
    )
  assert restored.step == 5
  assert "step 15" in lines[0] and "uncommitted" in lines[0]
  assert "step 10" in lines[1] and "UnicodeDecodeError" in lines[1]


@slow
def test_all_steps_damaged_raises_and_moves_nothing(tmp_path):
  _train(tmp_path, 10)
  ckpt_dir = tmp_path / loop.CHECKPOINT_DIR
  for step in (5, 10):
    _garbage_metadata(ckpt_dir / str(step))
  with pytest.raises(train_lib.NoUsableCheckpoint) as e:
    _train(tmp_path, 10)
  assert "step 10: unreadable" in str(e.value)
  assert "step 5: unreadable" in str(e.value)
  assert sorted(os.listdir(ckpt_dir)) == ["10", "5"]
