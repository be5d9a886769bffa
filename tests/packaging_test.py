"""Dependency metadata keeps a runtime's own (accelerator) JAX.

Colab and TPU VMs come with a JAX build for their accelerator. `pip install
jaxexit` must not replace it, so the requirements are ranges (never exact
pins) that contain both ends CI tests: JAX 0.10.2 (the last release for
Python 3.11) and 0.12.x (Python 3.12, Colab). The `tpu` and `cuda12` extras
forward to JAX's own extras of the same names.

The metadata checks read pyproject.toml with `packaging`. Two pip resolver
dry runs check what pip would do: one without an index (the installed JAX
is kept, only jaxexit would be installed) and one that asks the configured
index for Colab's jax/jaxlib 0.12.0.1 pinned next to jaxexit's requirements; it
skips when no index answers. Both together take about 20-45 s on 2 busy
cores.
"""

import importlib.metadata
import json
import pathlib
import subprocess
import sys
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from tests.tiers import slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Both ends of the supported range (README, .ci/run); 0.12.0.1 is Colab's.
JAX_VERSIONS = ("0.10.2", "0.12.0.1", "0.12.1")
PYTHON_VERSIONS = ("3.11.0", "3.12.1", "3.13.0")
ACCELERATOR_EXTRAS = ("tpu", "cuda12")
_PIP_TIMEOUT_S = 45


def _project() -> dict:
  with open(ROOT / "pyproject.toml", "rb") as f:
    return tomllib.load(f)["project"]


def _requirements(names) -> dict[str, Requirement]:
  reqs = {}
  for line in names:
    req = Requirement(line)
    reqs[req.name] = req
  return reqs


def test_requires_python_allows_311_and_312():
  spec = SpecifierSet(_project()["requires-python"])
  for v in PYTHON_VERSIONS:
    assert spec.contains(v), f"requires-python {spec} excludes Python {v}"


@pytest.mark.parametrize("version", JAX_VERSIONS)
def test_core_jax_range_allows(version):
  reqs = _requirements(_project()["dependencies"])
  assert "jax" in reqs
  spec = reqs["jax"].specifier
  assert spec.contains(version), f"jax{spec} excludes jax {version}"
  # jaxlib comes through jax's own pin; if listed, it must allow it too.
  if "jaxlib" in reqs:
    assert reqs["jaxlib"].specifier.contains(version)


def test_no_exact_pins_on_the_jax_stack():
  """An exact pin (==, ===) on any of these would replace a runtime's build."""
  reqs = _requirements(_project()["dependencies"])
  for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex"):
    if name in reqs:
      ops = {s.operator for s in reqs[name].specifier}
      assert not ops & {"==", "==="}, f"{name} is pinned: {reqs[name]}"


@pytest.mark.parametrize("extra", ACCELERATOR_EXTRAS)
def test_accelerator_extra_forwards_to_jax(extra):
  extras = _project()["optional-dependencies"]
  assert extra in extras, f"no [{extra}] extra in pyproject.toml"
  reqs = _requirements(extras[extra])
  assert reqs["jax"].extras == {extra}
  core = _requirements(_project()["dependencies"])["jax"].specifier
  assert reqs["jax"].specifier == core, "extra and core jax ranges differ"
  for v in JAX_VERSIONS:
    assert reqs["jax"].specifier.contains(v)


@pytest.mark.parametrize("extra", ACCELERATOR_EXTRAS)
def test_installed_jax_provides_extra(extra):
  """The extra names exist in the JAX this suite runs with."""
  provided = importlib.metadata.metadata("jax").get_all("Provides-Extra")
  assert extra in provided


def _pip_dry_run(*args: str) -> tuple[subprocess.CompletedProcess, dict]:
  """`pip install --dry-run --report` in this interpreter, and its report."""
  pytest.importorskip("setuptools", reason="--no-build-isolation needs it")
  cmd = [
    sys.executable,
    "-m",
    "pip",
    "install",
    "--dry-run",
    "--quiet",
    "--no-build-isolation",
    "--disable-pip-version-check",
    "--report",
    "-",
    *args,
  ]
  try:
    proc = subprocess.run(
      cmd,
      capture_output=True,
      text=True,
      cwd=ROOT,
      timeout=_PIP_TIMEOUT_S,
      check=False,
    )
  except subprocess.TimeoutExpired:
    pytest.skip(f"pip did not answer within {_PIP_TIMEOUT_S} s")
  report = {}
  if proc.returncode == 0:
    report = json.loads(proc.stdout)
  return proc, report


def _to_install(report: dict) -> dict[str, str]:
  return {
    i["metadata"]["name"].lower(): i["metadata"]["version"]
    for i in report["install"]
  }


@slow
def test_pip_keeps_installed_jax_offline():
  """With the installed JAX pinned beside `-e .`, pip installs only jaxexit."""
  jax_v = importlib.metadata.version("jax")
  jaxlib_v = importlib.metadata.version("jaxlib")
  proc, report = _pip_dry_run(
    "--no-index", "-e", ".", f"jax=={jax_v}", f"jaxlib=={jaxlib_v}"
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert set(_to_install(report)) == {"jaxexit"}, _to_install(report)


@slow
@pytest.mark.skipif(
  sys.version_info < (3, 12),
  reason="jaxlib 0.12.0.1 has no wheels for Python 3.11",
)
def test_pip_resolves_colab_jax_from_index():
  """Colab's jax/jaxlib 0.12.0.1 pinned beside jaxexit's requirements resolve.

  The requirements are passed as read from pyproject.toml rather than as
  `-e .`, which would build the metadata a second time (about 10 s); the
  offline test above covers the built metadata.
  """
  pins = ("jax==0.12.0.1", "jaxlib==0.12.0.1")
  net = ("--timeout", "10", "--retries", "0")
  proc, report = _pip_dry_run(*net, *_project()["dependencies"], *pins)
  if proc.returncode != 0:
    # An unreachable index also ends in ResolutionImpossible: ask for the
    # pins alone; if pip cannot find them, there is nothing to test.
    alone, _ = _pip_dry_run(*net, "--no-deps", *pins)
    if alone.returncode != 0:
      pytest.skip(
        "no index offers jax/jaxlib 0.12.0.1: " + alone.stderr.strip()[-300:]
      )
    pytest.fail(f"jaxexit conflicts with jax 0.12.0.1:\n{proc.stderr[-2000:]}")
  install = _to_install(report)
  assert install.get("jax", "0.12.0.1") == "0.12.0.1", install
  assert install.get("jaxlib", "0.12.0.1") == "0.12.0.1", install
