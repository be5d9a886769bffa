import json
from pathlib import Path

import numpy as np
import pytest

from experiments.lynx import __main__ as experiment
from experiments.lynx import configs

RECORD_FIELDS = (
  "eval",
  "delta",
  "baseline_acc",
  "lynx_acc",
  "baseline_tokens",
  "lynx_tokens",
  "savings",
  "exit_rate",
  "premature_exit_rate",
  "premature_exit_ci",
  "help",
  "harm",
)


@pytest.mark.parametrize("preset", sorted(configs.PRESETS))
def test_presets_build(preset):
  cfg = configs.get_config(preset)
  assert cfg.deltas and cfg.seeds


def test_scaled_layers_follow_the_spec():
  assert configs.scaled_layers(28) == (9, 16, 28)  # R1-Distill-Qwen-1.5B
  assert configs.scaled_layers(4) == (1, 2, 4)
  assert configs.scaled_layers(2) == (1, 2)


def test_bad_arguments_name_the_value():
  for argv in (
    ["--delta", "0"],
    ["--delta", "1.5"],
    ["--delta", "x"],
    ["--eval-data", "gsm8k,mmlu"],
    ["--seeds", "0"],
    ["--model", "gpt"],
  ):
    with pytest.raises(SystemExit):
      experiment.parse_args(argv)
  with pytest.raises(ValueError, match="go together"):
    configs.get_config("cpu", model="smollm2", eval_data=("synthetic",))
  assert configs.get_config("cpu", model="smollm2").eval_data == ("gsm8k",)
  with pytest.raises(ValueError, match="go together"):
    configs.get_config("cpu", eval_data=("math500",))
  with pytest.raises(ValueError, match="Config.deltas"):
    configs.get_config("cpu", deltas=(0.0,))
  args = experiment.parse_args(["--delta", "0.05,0.1", "--eval-data", "all"])
  assert args.delta == (0.05, 0.1) and "aime2024" in args.eval_data


def test_missing_eval_set_names_the_path(tmp_path):
  cfg = configs.get_config("smoke")
  from experiments.lynx import models

  with pytest.raises(Exception, match="math500"):
    models.problems_of(cfg, "math500", models.EVAL_STREAM, 5, tmp_path)


@pytest.mark.slow
def test_smoke_preset_writes_results(tmp_path):
  """The smoke LM learns the trace format, LYNX exits online on some
  problems at δ = 0.2, and rows that did not exit equal their full trace
  (online = offline replay on a trained model)."""
  experiment.main(
    ["--preset", "smoke", "--out", str(tmp_path), "--no-progress"]
  )
  for name in ("results.json", "results.md", "pareto.png", "log.txt"):
    assert (tmp_path / name).is_file(), name
  data = json.loads((tmp_path / "results.json").read_text())
  records = data["records"]
  assert {r["delta"] for r in records} == {0.1, 0.2}
  for r in records:
    assert set(RECORD_FIELDS) <= set(r), set(RECORD_FIELDS) - set(r)
    assert r["seeds"] == [0, 1]
  assert data["online_replay_mismatches"] == 0
  top = max(records, key=lambda r: r["delta"])
  assert top["exit_rate"] > 0, "no problem exited at the largest δ"
  assert top["lynx_tokens"] < top["baseline_tokens"]
  assert np.isfinite(top["event_premature_mean"])


# The staged data beside the repository (../shared/data), as CI has it.
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _write(path, rows):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


# Heavy tier: 325 s in a fresh-clone CI run on 2 cores (2026-12); the
# smoke run above is the slow tier's LYNX run.
@pytest.mark.heavy
def test_smollm2_on_math500_and_aime_layouts(tmp_path):
  """SmolLM2 through the whole pipeline on a data dir holding MATH-500
  and AIME 2024 in their stated layouts (and the staged GSM8K train split
  for the probe): every eval set gets its records and cue statistics."""
  data = tmp_path / "data"
  (data / "gsm8k").mkdir(parents=True)
  (data / "gsm8k" / "train.jsonl").symlink_to(
    SHARED_DATA / "gsm8k" / "train.jsonl"
  )
  _write(
    data / "math500" / "test.jsonl",
    [
      {
        "problem": f"What is {a} + {a}?",
        "solution": f"$\\boxed{{{2 * a}}}$",
        "answer": str(2 * a),
        "subject": "Prealgebra",
        "level": 1,
      }
      for a in (3, 7, 11, 20)
    ],
  )
  _write(
    data / "aime2024" / "test.jsonl",
    [
      {
        "id": f"2024-I-{a}",
        "problem": f"Find {a} times 3.",
        "solution": str(3 * a),
        "answer": str(3 * a),
        "url": "https://artofproblemsolving.com/",
      }
      for a in (2, 5, 9, 12)
    ],
  )
  out = tmp_path / "out"
  experiment.main(
    [
      "--preset",
      "smoke",
      "--model",
      "smollm2",
      "--eval-data",
      "math500,aime2024",
      "--data-dir",
      str(data),
      "--out",
      str(out),
      "--no-progress",
    ]
  )
  got = json.loads((out / "results.json").read_text())
  assert {r["eval"] for r in got["records"]} == {"math500", "aime2024"}
  assert [c["set"] for c in got["cues"]][1:] == ["math500", "aime2024"]
  assert all(c["mean_trace_tokens"] > 0 for c in got["cues"])
