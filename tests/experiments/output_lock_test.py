"""Two runs into one --out: the second is refused before it trains (issue 21).

Every experiment holds `jaxexit.results_store.lock_output_dir(--out)` for its
whole run; here the folder is held by this process, so each CLI must stop
with `OutputLocked` naming the lock file, before reading any data.
"""

import importlib

import pytest

from jaxexit import results_store

EXPERIMENTS = [
  "dynamax",
  "dynamic_perceiver",
  "exit_selfimprove",
  "hidrop",
  "jei_dnn",
]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_second_run_into_a_held_out_is_refused(tmp_path, name):
  main = importlib.import_module(f"experiments.{name}.__main__").main
  with results_store.lock_output_dir(tmp_path):
    with pytest.raises(results_store.OutputLocked) as e:
      main(["--preset", "smoke", "--out", str(tmp_path), "--no-progress"])
  assert str(tmp_path / results_store.DIR_LOCK) in str(e.value)
  assert sorted(p.name for p in tmp_path.iterdir()) == [results_store.DIR_LOCK]
