import importlib.util
import json
import pathlib
import shutil
import sys

import pytest

from experiments.hidrop import configs

_ROOT = pathlib.Path(__file__).resolve().parents[2]
_PATH = _ROOT / "benchmarks" / "token_pruning.py"


def _load_benchmark():
  spec = importlib.util.spec_from_file_location("token_pruning", _PATH)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


bench = _load_benchmark()


# ~50 s on 2 cores: eight programs compile, four of them training steps.
@pytest.mark.heavy  # minutes in a loaded CI run
def test_quick_run_on_a_tiny_model(tmp_path):
  md = tmp_path / "BENCHMARKS.md"
  shutil.copy(_ROOT / "BENCHMARKS.md", md)
  before = md.read_text()
  out = tmp_path / "token_pruning.json"
  bench.main(
    ["--quick", "--out", str(out), "--markdown", str(md)],
    base=configs.SMOKE_CLIP,
  )
  records = json.loads(out.read_text())
  assert [r["method"] for r in records] == list(configs.METHODS)
  full, hidrop = records[0], records[1]
  assert full["decoder_flops_fraction"] == pytest.approx(1.0)
  assert full["e2e_flops_fraction"] == pytest.approx(1.0)
  assert full["train_step_speedup"] == pytest.approx(1.0)
  for r in records[1:]:
    # The image tower is paid in full by every method, so the end-to-end
    # fraction lies between the decoder's and 1.
    assert r["decoder_flops_fraction"] < r["e2e_flops_fraction"] < 1
    assert r["train_step_ms"] > 0 and r["prefill_speedup"] > 0
    assert r["batch"] == bench.QUICK["timing_batch"]
    assert len(r["load_avg_1m"]) == 2
  assert set(hidrop["targets_met"]) == set(bench.TARGETS)
  text = md.read_text()
  start, end = "<!-- token_pruning:start -->", "<!-- token_pruning:end -->"
  outside = lambda t: t.split(start)[0] + t.split(end)[-1] if start in t else t
  # Only the marked section changes (appended if absent, else replaced).
  assert outside(text).rstrip() == outside(before).rstrip()
  section = text.split(start)[1].split(end)[0]
  assert section.count("\n| ") == len(records) + 1  # header + rows
  assert "Targets on CPU: HiDrop `tok64`" in section


def test_targets_line_states_each_target():
  records = [
    {"method": "full", "schedule": "full"},
    {
      "method": "hidrop",
      "schedule": "tok64",
      "train_step_speedup": 1.8,
      "prefill_speedup": 1.5,
      "targets_met": {"train_step": True, "prefill": False},
    },
  ]
  assert bench.targets_line(records) == (
    "Targets on CPU: HiDrop `tok64`: train step 1.80x (≥ 1.7x: met), "
    "prefill 1.50x (≥ 2x: NOT met)."
  )


def test_flags():
  args = bench.parse_args(["--quick"])
  assert args.out == bench.QUICK_RESULTS and args.markdown is None
  args = bench.parse_args([])
  assert args.out == bench.RESULTS and args.markdown == bench.BENCHMARKS_MD
  with pytest.raises(SystemExit):
    bench.parse_args(["--impl", "cuda"])
