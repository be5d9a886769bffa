"""`import jaxexit as jx`: the flat namespace, lazy subpackages, a cheap
import (no torch, no model weights, no checkpointing stack)."""

import json
import subprocess
import sys

import jaxexit as jx

HEAVY = (
  "torch",
  "transformers",
  "safetensors",
  "gguf",
  "tokenizers",
  "orbax.checkpoint",
  "matplotlib",
  "jaxexit.models",
  "jaxexit.train",
  "jaxexit.data",
)


def test_all_names_exist_and_version_is_set():
  for name in jx.__all__:
    assert getattr(jx, name) is not None, name
  assert isinstance(jx.__version__, str) and jx.__version__


def test_subpackages_load_on_first_use():
  assert jx.stats.verdict is not None
  assert "models" in dir(jx)
  try:
    jx.no_such_thing  # noqa: B018
  except AttributeError as e:
    assert "no_such_thing" in str(e)
  else:
    raise AssertionError("expected an AttributeError")


def test_import_is_cheap():
  code = (
    "import sys, time; t = time.perf_counter(); import jaxexit; "
    "import json; print(json.dumps([time.perf_counter() - t, "
    f"[m for m in {HEAVY!r} if m in sys.modules]]))"
  )
  out = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, check=True
  ).stdout
  seconds, heavy = json.loads(out)
  assert heavy == [], f"import jaxexit pulled in {heavy}"
  # jax itself takes ~1.5 s cold on 2 cores; the rest must stay small.
  assert seconds < 15, seconds
