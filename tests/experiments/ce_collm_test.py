"""python -m experiments.ce_collm: flags, presets, the naive scheme, and a
real smoke run (cloud and proxy processes) that leaves no process behind."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from experiments.ce_collm import __main__ as experiment
from experiments.ce_collm import configs
from jaxexit.serve import edge, edge_naive, launch
from tests.jaxexit.serve import serve_helpers as sh
from tests.tiers import slow

FIELDS = (
  "mode",
  "theta",
  "rtt_ms",
  "bandwidth_mbit",
  "quant",
  "latency_per_token_ms",
  "bytes_per_token",
  "cloud_request_rate",
  "cloud_flops_fraction",
  "quality",
  "quality_ci",
  "agreement_with_cloud_only",
)


@pytest.mark.parametrize("preset", sorted(configs.PRESETS))
def test_presets_build(preset):
  cfg = configs.get_config(preset)
  assert 1 <= cfg.split_layer < cfg.num_layers and cfg.thetas


@pytest.mark.parametrize(
  "argv, words",
  [
    (["--theta", "1.5"], ["--theta", "theta=1.5", "[0.0, 1.0]"]),
    (["--theta", "0.9,-0.1"], ["theta=-0.1"]),
    (["--split-layer", "4"], ["k=4", "[1, 3]"]),
    (["--split-layer", "0"], ["k=0"]),
    (["--preset", "cpu", "--split-layer", "30"], ["k=30", "[1, 29]"]),
    (["--rtt-ms", "10,20", "--bandwidth-mbit", "1,2,3"], ["--rtt-ms"]),
    (["--bandwidth-mbit", "0"], ["--bandwidth-mbit", "> 0"]),
    (["--clients", "33"], ["clients=33"]),
  ],
)
def test_bad_arguments_are_named(argv, words, capsys):
  with pytest.raises(SystemExit) as e:
    experiment.parse_args(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err
  for w in words:
    assert w in err, (w, err)


def test_network_lists_pair_up():
  args = experiment.parse_args(["--rtt-ms", "20,100", "--bandwidth-mbit", "5"])
  assert args.config.networks == ((20.0, 5.0), (100.0, 5.0))
  args = experiment.parse_args(["--theta", "1,0.5,0.2"])
  assert args.config.thetas == (1.0, 0.5, 0.2)
  assert args.config.naive_thetas == (0.5,)


def test_paper_preset_writes_the_runbook(tmp_path, capsys):
  assert experiment.main(["--preset", "paper", "--out", str(tmp_path)]) == 0
  cfg = json.loads((tmp_path / "config.json").read_text())
  assert cfg["model"] == "llama2-7b" and cfg["split_layer"] == 16
  assert "--split-layer 16" in capsys.readouterr().out


@pytest.mark.parametrize("theta", [1.0, 0.0105])
def test_naive_scheme_answers_like_the_reference(theta):
  """No context manager: every request re-sends positions 0..t-1 to a
  fresh session; the tokens equal the reference's decisions."""
  server = sh.start()
  try:
    model, _ = sh.tiny()
    cfg = edge.EdgeConfig(mode="collaborative", theta=theta, quant="fp32")
    naive = edge_naive.NaiveEdgeClient(
      model, sh.K, config=cfg, link=sh.link(server.target), max_len=sh.MAX_LEN
    )
    ans = naive.generate(sh.PROMPT, sh.N_NEW)
    opened = server.service.counters["Open"]
  finally:
    server.stop(None)
  ref, _ = sh.reference(sh.PROMPT, sh.N_NEW, lambda s, p: p >= theta > 0)
  assert ans.tokens == ref and ans.fallback is None
  asked = sum(s.source == "cloud" for s in ans.stats)
  assert asked >= 1 and opened >= asked  # A fresh session per request.
  assert server.service.store.stats().sessions == 0  # All closed.


@slow
def test_smoke_run_end_to_end(tmp_path):
  out = tmp_path / "run"
  argv = ["--preset", "smoke", "--out", str(out), "--clients", "2"]
  assert experiment.main(argv + ["--no-progress"]) == 0
  res = json.loads((out / "results.json").read_text())
  recs = res["records"]
  for r in recs:
    assert set(FIELDS) <= set(r)
  collab = sorted(
    (r for r in recs if r["mode"] == "collaborative"),
    key=lambda r: r["theta"],
  )
  top = collab[-1]
  assert top["theta"] == 1.0
  assert top["agreement_with_cloud_only"] == 1.0 and top["quality"] == 1.0
  rates = [r["cloud_request_rate"] for r in collab]
  assert rates == sorted(rates) and rates[0] < rates[-1]
  naive = next(r for r in recs if r["mode"] == "naive")
  same = next(r for r in collab if r["theta"] == naive["theta"])
  assert naive["bytes_per_token"] > same["bytes_per_token"]
  assert naive["cloud_flops_fraction"] > same["cloud_flops_fraction"]
  # Latency-aware: θ = 1 lowered by the measured request time R (tens of
  # ms through the 20 ms proxy) at c = 1 s: strictly between 0.5 and 1.
  aware = next(r for r in recs if r["mode"] == "latency_aware")
  assert aware["theta"] == 1.0 and aware["error_cost_s"] == 1.0
  assert 0.5 < aware["theta_in_force_mean"] < 1.0
  assert res["edge_head"]["kind"] == "trained"
  assert res["load"]["mismatched"] == 0
  procs = res["processes"]
  assert len(procs["pids"]) == 2 and not procs["left"]
  assert not [p for p in procs["pids"] if launch.pid_alive(p)]
  assert (out / "tradeoff.png").stat().st_size > 0
  assert "cloud_only" in (out / "results.md").read_text()


@slow
def test_ctrl_c_leaves_no_process(tmp_path):
  """SIGINT to the experiment alone (not its group) while it measures:
  it stops the cloud and the proxy it started."""
  cmd = [sys.executable, "-m", "experiments.ce_collm", "--preset", "smoke"]
  cmd += ["--out", str(tmp_path / "run"), "--no-progress"]
  proc = subprocess.Popen(
    cmd,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  pids, lines = [], []
  try:
    for line in proc.stdout:
      lines.append(line)
      if " pid " in line:
        pids.append(int(line.split(" pid ")[1].split()[0]))
      if len(pids) == 2:
        break
    assert len(pids) == 2, "".join(lines)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode != 0
  assert "processes left running: none" in rest, rest
  assert not [p for p in pids if launch.pid_alive(p)]
