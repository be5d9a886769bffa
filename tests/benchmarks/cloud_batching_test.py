import importlib.util
import pathlib
import sys

from tests.tiers import heavy

_PATH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"
_SPEC = importlib.util.spec_from_file_location(
  "cloud_batching", _PATH / "cloud_batching.py"
)
bench = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = bench
_SPEC.loader.exec_module(bench)


@heavy
def test_quick_run_batches_and_loses_no_token():
  records, about = bench.run(True, log=lambda msg: None)
  by = {(r["clients"], r["max_batch"]): r for r in records}
  n, b = bench.QUICK.clients[0], bench.QUICK.max_batch
  assert set(by) == {(n, 1), (n, b)}
  for r in records:
    assert r["mismatched"] == 0 and r["fallbacks"] == 0, r
    assert r["requests_per_s"] > 0
  assert by[(n, 1)]["batch_sizes"] == {}
  assert max(by[(n, b)]["batch_sizes"]) > 1  # Catch-ups did coincide.
  assert "| clients |" in bench.render(records, about, True)
