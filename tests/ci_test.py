"""`.ci/run` runs the README's test command on the primary Python (3.12)."""

import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CI = ROOT / ".ci" / "run"


def _readme_command(comment: str) -> str:
  """The README command line that ends with `# <comment>`."""
  readme = (ROOT / "README.md").read_text()
  lines = [
    l
    for l in readme.splitlines()
    if l.split("#")[-1].strip().startswith(comment)
  ]
  assert len(lines) == 1, lines
  return lines[0].split("#")[0].strip()


def _readme_test_command() -> str:
  return _readme_command("the tests")


def _function_body(script: str, name: str) -> str:
  match = re.search(rf"^{name}\(\) {{\n(.*?)^}}", script, re.S | re.M)
  assert match, f"no {name}() in .ci/run"
  return match.group(1)


def test_primary_phase_runs_readme_command_on_312():
  primary = _function_body(CI.read_text(), "primary")
  command = _readme_test_command()
  assert any(l.strip() == command for l in primary.splitlines()), command
  assert "python312" in primary and ".venv312" in primary


def test_primary_phase_runs_readme_lint_command():
  primary = _function_body(CI.read_text(), "primary")
  command = _readme_command("lint")
  assert command.startswith("ruff check")
  assert any(l.strip() == command for l in primary.splitlines()), command


def test_readme_test_command_runs_every_tier():
  """CI runs the README's command, so it must run the slow tier too."""
  assert _readme_test_command().endswith("python -m pytest --all")


def test_low_end_phase_pins_jax_0_10_2_on_311():
  low = _function_body(CI.read_text(), "low_end")
  assert "python3.11 -m venv" in low
  assert '"jax==0.10.2" "jaxlib==0.10.2"' in low
  # The fast tier of its paths (the slow tier runs in the primary phase).
  assert 'python -m pytest "${LOW_END_TESTS[@]}"' in low


def _collected(*args: str) -> list[str]:
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "pytest",
      "--collect-only",
      "-q",
      "-n",
      "0",
      "-p",
      "no:cacheprovider",
      *args,
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  return [l for l in out.splitlines() if "::" in l]


def test_plain_run_deselects_the_slow_tier_and_all_keeps_it():
  """tests/conftest.py: the fast tier by default, `--all` everything, a
  slow test named by node id still runs."""
  notebooks = "tests/colab/notebooks_test.py"
  run = f"{notebooks}::test_executes_at_smoke_preset"
  fast = _collected(notebooks)
  every = _collected(notebooks, "--all")
  named = _collected(f"{run}[hidrop]")
  assert fast and not any(l.startswith(run) for l in fast)
  assert set(fast) < set(every) and any(l.startswith(run) for l in every)
  assert named == [f"{run}[hidrop]"]


def test_all_deselects_the_heavy_tier_and_heavy_keeps_it():
  """`--all` (CI) leaves the heavy tier out, `--heavy` runs it, and a
  heavy test named by node id still runs."""
  dp = "tests/experiments/dynamic_perceiver_test.py"
  headline = f"{dp}::test_headline_smoke_spreads_exits_and_beats_majority"
  joint = f"{dp}::test_joint_smoke_preset_writes_results_and_resumes"
  ci = _collected(dp, "--all")
  every = _collected(dp, "--heavy")
  assert headline in ci and joint not in ci
  assert set(ci) < set(every) and joint in every
  assert _collected(joint) == [joint]


def test_low_end_test_paths_exist():
  script = CI.read_text()
  block = re.search(r"LOW_END_TESTS=\((.*?)\)", script, re.S).group(1)
  paths = block.split()
  assert paths
  for p in paths:
    assert (ROOT / p).exists(), p


def test_script_parses():
  if shutil.which("bash") is None:
    pytest.skip("no bash")
  subprocess.run(["bash", "-n", str(CI)], check=True)
