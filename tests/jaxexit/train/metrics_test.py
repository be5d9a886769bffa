"""Tests of the JSONL metrics writer, progress bar and seeding."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxexit.train import metrics as metrics_lib
from jaxexit.train import progress as progress_lib
from jaxexit.train import seed as seed_lib


def test_write_and_read(tmp_path):
  path = tmp_path / "m.jsonl"
  with metrics_lib.MetricsWriter(path) as w:
    rec = w.write(1, {"loss": jnp.float32(0.25), "n": np.int32(3)})
    w.write(2, {"loss": 0.125})
  assert rec == {"step": 1, "loss": 0.25, "n": 3}
  lines = path.read_text().splitlines()
  assert [json.loads(l)["step"] for l in lines] == [1, 2]
  assert metrics_lib.read_metrics(path)[1] == {"step": 2, "loss": 0.125}


def test_resume_drops_later_records_and_torn_line(tmp_path):
  path = tmp_path / "m.jsonl"
  with metrics_lib.MetricsWriter(path) as w:
    for s in range(1, 8):
      w.write(s, {"loss": 1.0 / s})
  with open(path, "a") as f:
    f.write('{"step": 8, "lo')  # A write torn by SIGKILL.
  with metrics_lib.MetricsWriter(path, resume_step=5) as w:
    for s in range(6, 9):
      w.write(s, {"loss": 1.0 / s})
  uninterrupted = tmp_path / "u.jsonl"
  with metrics_lib.MetricsWriter(uninterrupted) as w:
    for s in range(1, 9):
      w.write(s, {"loss": 1.0 / s})
  assert path.read_bytes() == uninterrupted.read_bytes()


def test_fresh_start_discards_old_log(tmp_path):
  path = tmp_path / "m.jsonl"
  path.write_text('{"step": 3, "loss": 1.0}\n')
  metrics_lib.MetricsWriter(path).close()
  assert path.read_text() == ""


def test_non_scalar_metric_raises(tmp_path):
  with metrics_lib.MetricsWriter(tmp_path / "m.jsonl") as w:
    with pytest.raises(ValueError, match="'acc'.*shape \\(2,\\)"):
      w.write(1, {"acc": jnp.zeros(2)})
    with pytest.raises(ValueError, match="step=-1"):
      w.write(-1, {})


def test_progress_bar_disabled_and_enabled(capsys):
  with progress_lib.ProgressBar(10, enabled=False) as bar:
    bar.update(1, {"loss": jnp.float32(0.5)})
  assert capsys.readouterr().err == ""
  with progress_lib.ProgressBar(10, initial=2, enabled=True) as bar:
    bar.update(3, {"loss": jnp.float32(0.5), "step_time": 1e-4})
  err = capsys.readouterr().err
  assert "5/10" in err and "loss=0.5" in err


def test_progress_lines_when_not_a_terminal(capsys):
  """Off a terminal (as under pytest) the default prints progress lines:
  one per `line_every_s` and one at the end, with the ETA."""
  with progress_lib.ProgressBar(10, line_every_s=0.0, desc="pabee") as bar:
    bar.update(4, {"loss": jnp.float32(0.25)})
  out = capsys.readouterr().out.splitlines()
  assert out[0].startswith("pabee: step 4/10 (40%)")
  assert "ETA" in out[0] and "loss=0.25" in out[0]
  with progress_lib.ProgressBar(10, line_every_s=3600.0) as bar:
    bar.update(10)
  out = capsys.readouterr().out.splitlines()
  assert len(out) == 1 and "step 10/10 (100%)" in out[0]  # only the last


def test_seed_keys_depend_only_on_seed_and_step():
  base = seed_lib.base_key(3)
  k5 = seed_lib.step_key(base, 5)
  np.testing.assert_array_equal(
    jax.random.key_data(k5),
    jax.random.key_data(seed_lib.step_key(seed_lib.base_key(3), 5)),
  )
  jitted = jax.jit(seed_lib.step_key)(base, jnp.int32(5))
  np.testing.assert_array_equal(
    jax.random.key_data(k5), jax.random.key_data(jitted)
  )
  assert not np.array_equal(
    jax.random.key_data(k5), jax.random.key_data(seed_lib.step_key(base, 6))
  )
  with pytest.raises(ValueError, match="seed=-1"):
    seed_lib.base_key(-1)


def test_disabled_writer_leaves_the_file_alone(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 2.0}\n')
  with metrics_lib.MetricsWriter(path, enabled=False) as w:
    assert w.write(2, {"loss": 1.5}) == {"step": 2, "loss": 1.5}
  assert path.read_text() == '{"step": 1, "loss": 2.0}\n'
