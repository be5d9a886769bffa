import importlib.util
import pathlib
import sys

from tests.tiers import heavy

_ROOT = pathlib.Path(__file__).resolve().parents[2]
_PATH = _ROOT / "benchmarks" / "exit_adapters.py"


def _load_benchmark():
  spec = importlib.util.spec_from_file_location("exit_adapters", _PATH)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


bench = _load_benchmark()


@heavy
def test_quick_run_trains_adapters_that_draft_better_and_stay_lossless(
  tmp_path,
):
  records, _ = bench.run(True, tmp_path, log=lambda msg: None)
  assert {r["head"] for r in records} == {"shared_head", "adapter"}
  for r in records:
    assert r["identical_to_full"], r  # greedy self-speculation is lossless
    # KL distillation raises held-out agreement with the final layer.
    assert r["agreement_after"] > r["agreement_before"] + 0.05, r
  by = {(r["exit_layer"], r["head"]): r["acceptance_rate"] for r in records}
  for layer in bench.QUICK.exit_layers:
    assert by[(layer, "adapter")] > by[(layer, "shared_head")]
