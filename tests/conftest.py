"""Test defaults: shape checks at run time, strict rank promotion, CPU; the
test tiers.

Tiers. A plain `python -m pytest` runs the fast tier, the development loop
(unit tests, tiny-config parity, one train step per preset; about 3 min on
2 cores): every test marked `slow` is deselected. `python -m pytest --all`
runs every tier, as the README's test command and CI do; `-m slow` runs the
slow tier alone. An explicit `-m` expression replaces the default (so
`-m "not gpu"` runs slow tests too), and a test named by node id
(`path::test_name[param]`) always runs. `slow` marks what takes more than
~5 s on 2 cores or runs a whole experiment, notebook, benchmark or
pretrained model.

Known flake (2026-11-29): in the full suite under `-n auto`, one xdist
worker died three times with a native crash inside XLA's CPU compiler while
compiling a small program in `tests/jaxexit/methods/jei_dnn_test.py` (the
test passes alone and next to its neighbours); on the fourth full run the
same worker first raised MemoryError / "failed to map segment from shared
object" in every test, then aborted. So the likely cause is what a worker
accumulates over ~100 test modules (compiled executables and the arrays they
keep alive), not the test itself: every test module now ends with
`jax.clear_caches()` and a garbage collection. pyproject's addopts still
rerun a test once when its worker crashed (`--only-rerun crashed`), never an
ordinary failure.
"""

import gc
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402
from jaxtyping import install_import_hook  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

# jaxtyping + beartype check every annotated public boundary of the library.
install_import_hook(["jaxexit", "kernels_pallas"], "beartype.beartype")


def pytest_addoption(parser):
  parser.addoption(
      "--all", action="store_true", dest="all_tiers",
      help="run every test tier: also the tests marked slow, which a plain "
      "run deselects (see tests/conftest.py)")


def _fast_tier(config) -> bool:
  return not (config.getoption("all_tiers") or config.option.markexpr)


def _named_by_node_id(config) -> set[str]:
  """The command line's `path::name` arguments, as rootdir-relative ids."""
  named = set()
  for arg in config.args:
    if "::" in arg:
      path, rest = arg.split("::", 1)
      path = os.path.relpath(os.path.abspath(path), config.rootpath)
      named.add(f"{path.replace(os.sep, '/')}::{rest}")
  return named


def pytest_report_header(config):
  if _fast_tier(config):
    return ("tier: fast (tests marked slow are deselected; `--all` runs "
            "every tier)")
  return None


def pytest_collection_modifyitems(config, items):
  """Deselects the slow tier unless `--all` or an explicit `-m` is given; a
  test named by node id on the command line still runs."""
  if not _fast_tier(config):
    return
  named = _named_by_node_id(config)

  def explicit(nodeid):
    return any(nodeid == n or nodeid.startswith((n + "[", n + "::"))
               for n in named)

  slow = [i for i in items
          if i.get_closest_marker("slow") and not explicit(i.nodeid)]
  if slow:
    config.hook.pytest_deselected(items=slow)
    slow = set(slow)
    items[:] = [i for i in items if i not in slow]


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Drops the module's compiled programs when it ends (see above)."""
  yield
  jax.clear_caches()
  gc.collect()
