"""Test defaults: shape checks at run time, strict rank promotion, CPU; the
test tiers.

Tiers. A plain `python -m pytest` runs the fast tier, the development loop
(unit tests, tiny-config parity, training steps; measured 2026-12-06 on 2
idle cores: 1,224 tests in 162 s wall, 287 s of CPU with two xdist
workers): every test marked `slow` or `heavy` is deselected. `python -m
pytest --all` adds the slow tier, as the README's test command and CI do:
`slow` marks what takes more than ~1.5 s of CPU on 2 cores (most
parametrized families keep one fast case, see tests/tiers.py) or runs a
whole experiment, notebook, benchmark, GGUF/pretrained model or subprocess
check. `--heavy` adds the heavy tier on top of `--all`: what CI's 50-minute
budget on 2 cores cannot hold, the cases of a grid beyond those the fast
and slow tiers run and the runs that repeat an experiment at a larger size
or on a simulated mesh (tests/tiers.py lists them, with measurements).
`-m slow` runs the slow tier alone; an explicit `-m` expression replaces
the default (so `-m "not gpu"` runs slow and heavy tests too), and a test
named by node id (`path::test_name[param]`) always runs.

Compiled programs and memory maps. Every XLA:CPU executable that JAX's
caches keep alive holds its own memory mappings, and a process may hold at
most `vm.max_map_count` of them (65530 by default); past that, mmap fails
with ENOMEM. That explains the flake of 2026-11-29: in the full suite under
`-n auto`, one xdist worker died three times with a native crash inside
XLA's CPU compiler, and on the fourth run first raised MemoryError /
"failed to map segment from shared object" in every test, then aborted (RAM
was not short). Measured 2026-12-06 on the fast tier in one process (`-n
0`, 108 modules, VmRSS and /proc/self/maps after each test): with no cache
clearing the process ended with 29,770 mappings and 3.1 GB RSS (about 275
mappings and 20 MB per module; the slow tier compiles several times more
per module, so a worker of the full suite reaches the limit); with
`jax.clear_caches()` after every module it stayed at 1,400-1,780 mappings
and at most 1.7 GB. Clearing after every module also recompiles, in every
module, the small programs they share (eager ops, the same tiny models):
377 s of CPU against 309 s for the same 1,242 tests when clearing only as
below. So a module ends with `jax.clear_caches()` and a garbage collection
only when the process holds more than a quarter of `vm.max_map_count`
mappings (16,382 by default) or more than 4 GiB RSS, and after every module
where /proc is missing (macOS); measured: at most 16,400 mappings and two
clears in that run. `jaxexit.debug_checks` clears the caches itself when
its flag changes. pyproject's addopts still rerun a test once when its
worker crashed (`--only-rerun crashed`), never an ordinary failure.
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
    "--all",
    action="store_true",
    dest="all_tiers",
    help="run the fast and slow tiers (the README's test command and CI): "
    "also the tests marked slow, which a plain run deselects (see "
    "tests/conftest.py)",
  )
  parser.addoption(
    "--heavy",
    action="store_true",
    dest="heavy_tier",
    help="run every tier: `--all` plus the tests marked heavy (several "
    "minutes each; see tests/tiers.py)",
  )


def _deselected_markers(config) -> tuple[str, ...]:
  """The tier markers a run deselects: slow and heavy by default, heavy
  under `--all`, none under `--heavy` or an explicit `-m`."""
  if config.getoption("heavy_tier") or config.option.markexpr:
    return ()
  if config.getoption("all_tiers"):
    return ("heavy",)
  return ("slow", "heavy")


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
  deselected = _deselected_markers(config)
  if "slow" in deselected:
    return (
      "tier: fast (tests marked slow or heavy are deselected; `--all` adds "
      "the slow tier, `--heavy` every tier)"
    )
  if deselected:
    return "tiers: fast and slow (tests marked heavy are deselected)"
  return None


def pytest_collection_modifyitems(config, items):
  """Deselects the slow and heavy tiers unless `--all`, `--heavy` or an
  explicit `-m` asks for them; a test named by node id still runs."""
  deselected = _deselected_markers(config)
  if not deselected:
    return
  named = _named_by_node_id(config)

  def explicit(nodeid):
    return any(
      nodeid == n or nodeid.startswith((n + "[", n + "::")) for n in named
    )

  dropped = [
    i
    for i in items
    if any(i.get_closest_marker(m) for m in deselected)
    and not explicit(i.nodeid)
  ]
  if dropped:
    config.hook.pytest_deselected(items=dropped)
    dropped = set(dropped)
    items[:] = [i for i in items if i not in dropped]


def _proc_number(path: str, prefix: str = "") -> int | None:
  """The first integer on `path`'s line that starts with `prefix`."""
  try:
    with open(path) as f:
      for line in f:
        if line.startswith(prefix):
          return int(line[len(prefix) :].split()[0])
  except (OSError, ValueError, IndexError):
    return None
  return None


def _memory_maps() -> int | None:
  """How many memory mappings this process holds (None without /proc)."""
  try:
    with open("/proc/self/maps", "rb") as f:
      return f.read().count(b"\n")
  except OSError:
    return None


_MAX_MAPS = (_proc_number("/proc/sys/vm/max_map_count") or 65530) // 4
_MAX_RSS_KB = 4 * 2**20


def _holds_too_much() -> bool:
  maps = _memory_maps()
  rss_kb = _proc_number("/proc/self/status", "VmRSS:")
  if maps is None or rss_kb is None:
    return True
  return maps > _MAX_MAPS or rss_kb > _MAX_RSS_KB


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Drops JAX's compiled programs after a module when the process holds
  too many memory mappings or too much memory (see above)."""
  yield
  if _holds_too_much():
    jax.clear_caches()
    gc.collect()
