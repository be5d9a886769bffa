import json
import os
import pathlib

import pytest

from experiments.palbert_glue import __main__ as demo
from experiments.palbert_glue import configs, sst2

DATA = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"
DATA_DIR = os.environ.get("JAXEXIT_DATA") or (str(DATA) if DATA.exists() else None)


@pytest.mark.parametrize("preset", ["smoke", "cpu"])
def test_configs_build(preset):
  cfg = configs.get_config(preset)
  assert cfg.model.num_layers >= 2 and cfg.train_steps > 0


def test_unknown_preset():
  with pytest.raises(ValueError, match="preset='huge'"):
    configs.get_config("huge")


def test_malformed_tsv_names_file_and_line(tmp_path):
  path = tmp_path / "dev.tsv"
  path.write_text("sentence\tlabel\ngood\t1\nbad line without label\n")
  with pytest.raises(ValueError, match=r"dev.tsv:3: malformed"):
    sst2.read_tsv(path)


def test_hash_tokens_truncates_and_pads():
  toks = sst2.hash_tokens(["a b c d e", "x"], vocab_size=50, max_len=4)
  assert toks.shape == (2, 4) and (toks[:, 0] == 1).all()
  assert (toks[0, 1:] > 1).all() and (toks[1, 2:] == 0).all()


@pytest.mark.slow
@pytest.mark.skipif(DATA_DIR is None, reason="no data dir with SST-2")
def test_smoke_preset_writes_results(tmp_path):
  demo.main(["--preset", "smoke", "--out", str(tmp_path), "--no-progress",
             "--data-dir", DATA_DIR])
  records = json.loads((tmp_path / "results.json").read_text())
  assert {r["method"] for r in records} >= {"full", "pabee", "max-softmax"}
  full = next(r for r in records if r["method"] == "full")
  assert full["avg_layers"] == configs.get_config("smoke").model.num_layers
  assert (tmp_path / "results.md").exists() and (tmp_path / "pareto.png").exists()
