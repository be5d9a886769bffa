import importlib.util
import json
import pathlib
import sys

import jax
import pytest

_PATH = (
  pathlib.Path(__file__).resolve().parents[2]
  / "benchmarks"
  / "pallas_kernels.py"
)


def _load_benchmark():
  spec = importlib.util.spec_from_file_location("kernels_benchmark", _PATH)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


bench = _load_benchmark()


@pytest.mark.heavy  # the quick benchmark run: 6 min in a loaded CI run
def test_interpret_quick_run_checks_both_kernels_on_both_lowerings(
  tmp_path, capsys
):
  out = tmp_path / "kernels.json"
  result = bench.main(["--backend", "interpret", "--quick", "--out", str(out)])
  records = result["records"]
  ops = [
    ("position_attention", "fwd"),
    ("position_attention", "fwd+bwd"),
    ("selection_scores", "fwd"),
  ]
  assert [(r["backend"], r["op"], r["pass"]) for r in records] == [
    (backend, *op) for backend in ("gpu", "tpu") for op in ops
  ]
  assert all(r["interpret"] for r in records)
  assert all(r["ok"] and r["rel_err"] < 1e-5 for r in records)
  # Achieved rates are reported; no peak applies to the interpreters.
  assert all(
    r["kernel_tflops"] > 0 and r["reference_gbps"] > 0 for r in records
  )
  assert all(r["kernel_peak_flops_frac"] is None for r in records)
  assert result["backend"] == "interpret" and result["peak"] is None
  assert "say nothing about kernel speed" in result["note"]
  assert json.loads(out.read_text()) == json.loads(json.dumps(result))
  text = capsys.readouterr().out
  assert "| selection_scores | fwd | tpu interp | 2 | float32 |" in text


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="needs a CPU")
@pytest.mark.parametrize("backend", ["auto", "gpu", "tpu"])
def test_refuses_cpu_without_interpret(backend):
  with pytest.raises(SystemExit, match="needs a GPU or TPU.*interpret"):
    bench.main(["--backend", backend, "--quick"])


def test_peaks_cover_the_named_devices():
  assert bench.peak_for("NVIDIA H100 80GB HBM3")["gbps"] == 3350.0
  assert bench.peak_for("NVIDIA H100 PCIe")["bfloat16"] == 756.0
  assert bench.peak_for("NVIDIA H200")["gbps"] == 4800.0
  assert bench.peak_for("NVIDIA A100-SXM4-80GB")["bfloat16"] == 312.0
  assert bench.peak_for("TPU v4")["bfloat16"] == 275.0
  assert bench.peak_for("TPU v5 lite")["gbps"] == 819.0
  assert bench.peak_for("TPU v5p")["bfloat16"] == 459.0
  assert bench.peak_for("cpu") is None


def test_committed_results_are_a_labelled_interpret_run():
  result = json.loads((_PATH.parent / "results" / "kernels.json").read_text())
  assert result["backend"] in ("interpret", "gpu", "tpu")
  if result["backend"] == "interpret":
    assert result["peak"] is None and "interpret" in result["note"].lower()
  assert result["records"] and all(r["ok"] for r in result["records"])


@pytest.mark.parametrize(
  "field, value",
  [
    ("batches", (0,)),
    ("dtypes", ("float16",)),
    ("kv_heads", 3),
    ("head_dim", 0),
    ("warmup", -1),
  ],
)
def test_settings_reject_bad_values(field, value):
  with pytest.raises(ValueError, match=field):
    bench.Settings(**{field: value})
