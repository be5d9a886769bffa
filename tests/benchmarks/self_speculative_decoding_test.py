import importlib.util
import pathlib
import sys

import numpy as np
from flax import nnx

from jaxexit.models.llama import LlamaConfig, LlamaLM
from tests.benchmarks.early_exit_decoding_test import RECORD_KEYS
from tests.tiers import heavy

_PATH = (
  pathlib.Path(__file__).resolve().parents[2]
  / "benchmarks"
  / "self_speculative_decoding.py"
)


def _load_benchmark():
  spec = importlib.util.spec_from_file_location(
    "self_speculative_decoding", _PATH
  )
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


bench = _load_benchmark()


@heavy  # compiles two decoders (~10 s on 2 idle cores, ~1 min loaded)
def test_measure_writes_the_required_fields():
  model = LlamaLM(
    LlamaConfig(
      vocab_size=32,
      d_model=16,
      num_layers=4,
      num_heads=2,
      num_kv_heads=1,
      mlp_hidden=32,
      max_position=32,
    ),
    rngs=nnx.Rngs(0),
  )
  prompts = np.array([[1, 2, 3, 4]], np.int32)
  records = bench.measure(
    model, prompts, np.array([4], np.int32), "toy", ((2, 2),), 6, 1
  )
  (r,) = records
  for field in (*RECORD_KEYS, "acceptance_rate"):
    assert field in r
  assert r["state_mode"] == "self_speculative" and r["batch"] == 1
  assert r["identical_to_full"] and r["consistency"] == 1.0
  assert "| toy | 2 | 2 |" in bench.render(records, "toy", True, 1)
