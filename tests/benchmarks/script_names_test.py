"""No benchmark script shadows a module our dependencies import.

`python benchmarks/x.py` puts benchmarks/ first on sys.path, and some
benchmark modules put it there when imported, so a script named like a
top-level module replaces that module for everything imported after it.
transformers imports the Hugging Face `kernels` package whenever one is
importable: a `benchmarks/kernels.py` made every transformers parity test
that ran after a benchmark test in the same worker fail (ImportError
'CUDAProperties'; 37 failures in a CI run of 2026-12-07).
"""

import importlib.metadata
import importlib.util
import pathlib
import re

BENCHMARKS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"


def _probed_by_transformers() -> set[str]:
  """The optional packages transformers imports when it finds them."""
  spec = importlib.util.find_spec("transformers.utils.import_utils")
  if spec is None:
    return set()
  source = pathlib.Path(spec.origin).read_text()
  return set(re.findall(r'_is_package_available\(\s*"([\w.]+)"', source))


def test_no_script_is_named_like_an_importable_package():
  taken = set(importlib.metadata.packages_distributions())
  taken |= _probed_by_transformers()
  clashes = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.stem in taken)
  assert not clashes, clashes
