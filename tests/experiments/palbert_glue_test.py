import json
import os
import pathlib

import pytest

from experiments.palbert_glue import __main__ as experiment
from experiments.palbert_glue import configs

DATA = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"
DATA_DIR = os.environ.get("JAXEXIT_DATA") or (str(DATA) if DATA.exists() else None)


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


def test_unknown_model():
  from experiments.palbert_glue import models
  with pytest.raises(ValueError, match="model='not-a-model'"):
    models.load("not-a-model")


def test_local_albert_folder_with_sentencepiece_tokenizer(tmp_path):
  """`--model <folder>`: an ALBERT checkpoint with its Unigram tokenizer.json."""
  pytest.importorskip("transformers")
  from experiments.palbert_glue import models
  from jaxexit.models import AlbertEncoder
  from tests.jaxexit.data import tiny_tokenizers
  from tests.jaxexit.models import hf_tiny
  folder = pathlib.Path(hf_tiny.save(hf_tiny.build("albert", num_layers=2),
                                     str(tmp_path / "albert"), "safetensors"))
  tiny_tokenizers.albert_like(
      ["<pad>", "<unk>", "[CLS]", "[SEP]", "▁the", "▁cat", "▁"]).save(
          str(folder / "tokenizer.json"))
  encoder, tok = models.load(str(folder))
  assert isinstance(encoder, AlbertEncoder)
  enc = tok.encode_batch(["The cat"], ["the"], max_len=8)
  assert enc.input_ids[0].tolist() == [2, 4, 5, 3, 4, 3, 0, 0]


@pytest.mark.slow
@pytest.mark.skipif(DATA_DIR is None, reason="no data dir with GLUE RTE")
def test_smoke_preset_all_methods_writes_results(tmp_path):
  experiment.main(["--preset", "smoke", "--task", "rte", "--method", "all",
                   "--out", str(tmp_path), "--no-progress",
                   "--data-dir", DATA_DIR])
  records = json.loads((tmp_path / "results.json").read_text())
  assert [r["method"] for r in records] == [
      "palbert", "pondernet", "pabee", "deebert", "berxit", "static", "full"]
  for r in records:
    assert set(r) >= {"task", "method", "metric", "score", "avg_layers",
                      "theoretical_speedup", "realised_speedup"}
  full = next(r for r in records if r["method"] == "full")
  assert full["avg_layers"] == 6.0  # MiniLM-L6 runs every layer
  assert (tmp_path / "results.md").exists()
  assert (tmp_path / "pareto.png").exists()
