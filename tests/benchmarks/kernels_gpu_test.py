import importlib.util
import json
import pathlib
import sys

import jax
import pytest

_PATH = (pathlib.Path(__file__).resolve().parents[2] / "benchmarks"
         / "kernels_gpu.py")


def _load_benchmark():
  spec = importlib.util.spec_from_file_location("kernels_gpu", _PATH)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


bench = _load_benchmark()


def test_interpret_quick_run_checks_both_kernels(tmp_path, capsys):
  out = tmp_path / "kernels.json"
  records = bench.main(["--interpret", "--quick", "--out", str(out)])
  assert [(r["op"], r["pass"]) for r in records] == [
      ("position_attention", "fwd"), ("position_attention", "fwd+bwd"),
      ("selection_scores", "fwd")]
  assert all(r["ok"] and r["rel_err"] < 1e-5 for r in records)
  assert json.loads(out.read_text()) == records
  assert "| selection_scores | fwd | 2 | float32 |" in capsys.readouterr().out


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="runs on a GPU")
def test_refuses_cpu_without_interpret():
  with pytest.raises(SystemExit, match="needs a GPU.*--interpret"):
    bench.main(["--quick"])


@pytest.mark.parametrize("field, value", [
    ("batches", (0,)), ("dtypes", ("float16",)), ("kv_heads", 3),
    ("block_k", 0), ("warmup", -1)])
def test_settings_reject_bad_values(field, value):
  with pytest.raises(ValueError, match=field):
    bench.Settings(**{field: value})
