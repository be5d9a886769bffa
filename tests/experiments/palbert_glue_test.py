import json
import os
import pathlib

import pytest

from experiments.palbert_glue import __main__ as experiment
from experiments.palbert_glue import configs
from jaxexit.methods.encoder_exits import METHODS
from tests.tiers import slow

DATA = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"
DATA_DIR = os.environ.get("JAXEXIT_DATA") or (
  str(DATA) if DATA.exists() else None
)


@pytest.mark.parametrize("preset", sorted(configs.PRESETS))
def test_presets_build(preset):
  cfg = configs.get_config(preset)
  assert cfg.batch_size > 0 and cfg.max_len > 0


def test_bad_arguments():
  with pytest.raises(ValueError, match="preset='huge'"):
    configs.get_config("huge")
  with pytest.raises(ValueError, match="method='ee'"):
    experiment.parse_args(["--method", "palbert,ee"])
  with pytest.raises(ValueError, match="imagenet"):
    experiment.parse_args(["--task", "imagenet"])
  with pytest.raises(ValueError, match="--seeds=0"):
    experiment.parse_args(["--seeds", "0"])
  with pytest.raises(ValueError, match="prior='flat'"):
    configs.get_config("cpu", prior="flat")
  with pytest.raises(ValueError, match="epochs=0"):
    configs.get_config("cpu", epochs=0)
  with pytest.raises(ValueError, match="epochs=nan"):
    configs.get_config("cpu", epochs=float("nan"))


def test_unknown_model():
  from experiments.palbert_glue import models

  with pytest.raises(ValueError, match="model='not-a-model'"):
    models.load("not-a-model")


@slow
def test_local_albert_folder_with_sentencepiece_tokenizer(tmp_path):
  """`--model <folder>`: an ALBERT checkpoint with a Unigram tokenizer.json."""
  pytest.importorskip("transformers")
  from experiments.palbert_glue import models
  from jaxexit.models import AlbertEncoder
  from tests.jaxexit.data import tiny_tokenizers
  from tests.jaxexit.models import hf_tiny

  folder = pathlib.Path(
    hf_tiny.save(
      hf_tiny.build("albert", num_layers=2),
      str(tmp_path / "albert"),
      "safetensors",
    )
  )
  tiny_tokenizers.albert_like(
    ["<pad>", "<unk>", "[CLS]", "[SEP]", "▁the", "▁cat", "▁"]
  ).save(str(folder / "tokenizer.json"))
  encoder, tok, pooling = models.load(str(folder))
  assert isinstance(encoder, AlbertEncoder)
  assert pooling == "cls_pooler"  # a plain HF folder: its trained pooler
  enc = tok.encode_batch(["The cat"], ["the"], max_len=8)
  assert enc.input_ids[0].tolist() == [2, 4, 5, 3, 4, 3, 0, 0]


@pytest.mark.slow
@pytest.mark.skipif(DATA_DIR is None, reason="no data dir with GLUE SST-2")
def test_smoke_preset_all_methods(tmp_path):
  """The smoke run of every method writes every file with the per-seed
  keys, and is not a collapsed model: the full model beats the majority
  class on SST-2 dev, and the threshold methods' exits vary across
  examples. One seed (16 runs took 10 min in a loaded CI run); the
  palbert_glue notebook in CI aggregates two."""
  experiment.main(
    [
      "--preset",
      "smoke",
      "--task",
      "sst2",
      "--method",
      "all",
      "--seeds",
      "1",
      "--out",
      str(tmp_path),
      "--no-progress",
      "--data-dir",
      DATA_DIR,
    ]
  )
  records = {
    r["method"]: r for r in json.loads((tmp_path / "results.json").read_text())
  }
  assert set(records) == {"majority", *METHODS}
  for name in METHODS:
    r = records[name]
    assert set(r) >= {
      "task",
      "method",
      "metric",
      "score",
      "avg_layers",
      "theoretical_speedup",
      "realised_speedup",
      "seeds",
      "score_mean",
      "score_ci",
      "avg_layers_mean",
      "avg_layers_std_over_examples",
      "verdict_vs",
    }
    assert len(r["seeds"]) == 1 and r["score"] == r["score_mean"]
  assert records["full"]["avg_layers"] == 6.0  # MiniLM-L6 runs every layer
  majority = records["majority"]
  # Measured: full 74.5 (2 seeds; 75.0 seed 42) vs majority 53.1 on the 96
  # dev examples.
  assert records["full"]["score_mean"] > majority["score"] + 0.1
  for name in ("deebert", "pabee"):
    assert records[name]["avg_layers_std_over_examples"] > 0.1, name
  assert set(records["palbert"]["verdict_vs"]) == {"pabee", "pondernet"}
  for name in ("results.md", "pareto.png", "runs.json", "log.txt"):
    assert (tmp_path / name).exists()


@pytest.mark.slow
@pytest.mark.skipif(DATA_DIR is None, reason="no data dir with GLUE SST-2")
def test_two_invocations_into_one_out_merge(tmp_path):
  """`--method static` after `--method full` keeps both; a rerun with
  changed settings is refused, naming the changed field."""
  base = [
    "--preset",
    "smoke",
    "--task",
    "sst2",
    "--seeds",
    "1",
    "--out",
    str(tmp_path),
    "--no-progress",
    "--data-dir",
    DATA_DIR,
  ]
  experiment.main(base + ["--method", "full"])
  experiment.main(base + ["--method", "static"])
  methods = {
    r["method"] for r in json.loads((tmp_path / "results.json").read_text())
  }
  assert methods == {"majority", "full", "static"}
  with pytest.raises(ValueError, match="epochs"):
    experiment.main(base + ["--method", "full", "--epochs", "0.5"])


def test_readme_table_and_verdicts_come_from_committed_results():
  """The README's table is `tables.main_table` of the committed
  results.json, which has 3 seeds per method, a full model above the
  majority class and PALBERT exits that vary across examples."""
  from experiments.palbert_glue import tables

  folder = (
    pathlib.Path(__file__).resolve().parents[2]
    / "experiments"
    / ("palbert_glue")
  )
  records = json.loads((folder / "results" / "results.json").read_text())
  readme = (folder / "README.md").read_text()
  assert tables.main_table(records) in readme
  by = {r["method"]: r for r in records}
  assert all(len(r["seeds"]) >= 3 for m, r in by.items() if m != "majority")
  assert by["full"]["score_ci"][0] > by["majority"]["score_ci"][1]
  assert by["palbert"]["avg_layers_std_over_examples"] > 0
  for baseline, v in by["palbert"]["verdict_vs"].items():
    assert f"palbert vs {baseline}: **{v['verdict']}**" in readme
