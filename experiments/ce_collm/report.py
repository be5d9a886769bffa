"""results.md, the paper preset's runbook, and the load test's run."""

import dataclasses
import json
import pathlib

from experiments.ce_collm import run, summary
from jaxexit import report


def load_test(model, cfg, prompts):
  """`cfg.clients` collaborative clients (θ = 1: every token a request),
  each with its own token, against one in-process cloud on loopback (its
  session store is read while they run); `jaxexit.serve.load.LoadReport`."""
  from jaxexit.serve import cloud, launch, load, server_config

  tokens = {launch.new_token(): f"client-{i}" for i in range(cfg.clients)}
  handle = cloud.start_server(
    model.backbone,
    cfg.split_layer,
    tokens=tokens,
    config=server_config.ServerConfig(max_len=cfg.max_len),
    model_hash=model.digest,
  )
  clients = [
    run.make_client(
      model, cfg, "collaborative", 1.0, target=handle.target, token=t
    )
    for t in tokens
  ]
  try:
    return load.run_load(
      clients,
      [list(p.ids) for p in prompts],
      cfg.load_tokens,
      store_stats=handle.service.store.stats,
      eos_id=model.eos_id,
    )
  finally:
    for c in clients:
      c.link.close()
    handle.stop(5.0)


def _quant_table(quant: dict) -> str:
  rows = [
    [
      m,
      q["bytes_per_position"],
      f"{q['max_abs_error']:.2e}",
      f"{q['top1_agreement']:.2f}",
    ]
    for m, q in quant.items()
  ]
  return report.markdown_table(
    ["wire", "bytes / position", "max abs Δ logit vs fp32", "top-1 agreement"],
    rows,
  )


def _headline(heads, records) -> list[str]:
  lines = []
  for h in heads:
    lat, cc = h["latency_change"], h["cloud_compute_change"]
    naive = [
      (n, c)
      for n in records
      for c in records
      if n["mode"] == "naive"
      and c["mode"] == "collaborative"
      and n["theta"] == c["theta"]
      and (n["rtt_ms"], n["bandwidth_mbit"])
      == (c["rtt_ms"], c["bandwidth_mbit"])
      == (h["rtt_ms"], h["bandwidth_mbit"])
    ]
    what = f"θ = {h['theta']:g}"
    if h.get("error_cost_s") is not None:
      what = (
        f"latency-aware c = {h['error_cost_s']:g} s (mean θ "
        f"{h['theta_in_force_mean']:.3f})"
      )
    lines.append(
      f"* {h['rtt_ms']:g} ms / {h['bandwidth_mbit']:g} Mbit/s, {what} "
      f"(quality {h['quality']:.3f}): latency "
      f"{100 * lat['diff_mean']:+.1f} % → **{lat['verdict']}** (paper "
      f"−13.8 %); cloud compute {100 * cc['diff_mean']:+.1f} % → "
      f"**{cc['verdict']}** (paper −84.6 %)."
      + "".join(
        f" At θ = {n['theta']:g} the naive scheme (no context manager) "
        f"sends {n['bytes_per_token']:.0f} B/token vs "
        f"{c['bytes_per_token']:.0f} with it, at "
        f"{n['latency_per_token_ms']:.1f} vs "
        f"{c['latency_per_token_ms']:.1f} ms/token and "
        f"{n['cloud_flops_fraction']:.2f} vs "
        f"{c['cloud_flops_fraction']:.2f} of cloud-only's compute."
        for n, c in naive
      )
    )
  return lines or ["* no collaborative θ reached the comparable quality."]


def markdown(preset, cfg, model, records, heads, extra) -> str:
  load = extra["load"]
  load_text = "not run (`--clients 0`)."
  if load:
    load_text = (
      f"{load['clients']} clients (θ = 1, in-process cloud on loopback, "
      f"{cfg.load_tokens} tokens each): {load['requests_per_s']:.1f} "
      f"requests/s, p50 {load['latency_p50_ms']:.1f} ms, p99 "
      f"{load['latency_p99_ms']:.1f} ms (alone p50 "
      f"{load['alone_latency_p50_ms']:.1f} ms); store peak "
      f"{load['peak_total_bytes'] / 2**20:.2f} MiB over "
      f"{load['peak_sessions']} sessions (largest "
      f"{load['peak_session_bytes'] / 2**20:.3f} MiB) of a "
      f"{load['budget_bytes'] / 2**20:.0f} MiB budget, {load['evictions']} "
      f"evictions; {load['mismatched']} clients differ from their run alone."
    )
  return "\n".join(
    [
      f"# CE-CoLLM (preset `{preset}`)",
      "",
      f"Model: {model.description}, split after block k = "
      f"{cfg.split_layer} of {cfg.num_layers}; edge exit head: "
      f"{model.edge.description}. "
      f"{len(extra['prompts'])} prompts ({', '.join(cfg.prompt_sets)}), "
      f"≤ {cfg.max_new_tokens} greedy tokens, {cfg.quant} transport. Cloud "
      "and shaping proxy are separate processes; latency is measured at the "
      "edge through the proxy, per answer (session open/close included). "
      "Quality: share of cloud-only's tokens matched position by position "
      "(95 % bootstrap CI over prompts); 'same answer': share of prompts "
      "with identical output. Cloud compute: blocks × positions the cloud "
      "ran over cloud-only's (prompt prefill included). Verdicts "
      "(`jaxexit.stats.verdict`) on the per-prompt relative change vs "
      "cloud-only in the same network setting.",
      "",
      summary.results_table(records),
      "",
      "## Against the paper",
      "",
      summary.PAPER,
      "",
      f"Fastest collaborative θ with quality ≥ {cfg.comparable_quality:g} "
      "per network setting (picked after seeing the results):",
      "",
      *_headline(heads, records),
      "",
      "## Transport quantisation (cloud logits, last prompt position)",
      "",
      _quant_table(extra["quantisation"]),
      "",
      "## Load test",
      "",
      load_text,
      "",
      f"Cloud-only answers that differ between passes: "
      f"{extra['cloud_only_drift']}. Processes: "
      f"{extra['processes']['exit_codes']}, left running: "
      f"{extra['processes']['left'] or 'none'}.",
      "",
    ]
  )


RUNBOOK = """\
# CE-CoLLM, paper scale (runbook; not run here)

Config: {config}

1. Weights: LLaMA-2-7B (32 blocks) is not served by `jaxexit.serve.models`
   yet (only `tiny` and `smollm2`); add a loader there (the same weights
   hash on both sides) before anything else.
2. TLS credentials (the commands in `jaxexit/serve/cloud.py`'s docstring)
   and a tokens file, then on the cloud host:

     python -m jaxexit.serve.cloud --host 0.0.0.0 --port 8000 \\
       --model llama2-7b --split-layer {k} --max-len {max_len} \\
       --tokens-file tokens.txt --tls-cert server.pem --tls-key server.key

3. Per network setting {networks} (RTT ms, Mbit/s): a shaping proxy, or
   `tc netem` on the edge host's interface:

     python -m jaxexit.serve.netshape --listen 127.0.0.1:9000 \\
       --target CLOUD:8000 --rtt-ms RTT --bandwidth-mbit BW

4. The edge (another host or process; exit head: train one with
   `jaxexit.methods.dynamax` on layer {k}'s states, as the issue asks):
   θ ∈ {thetas}, {prompts} prompts per set of {sets}, ≤ {new} tokens,
   through the proxy, in the modes of `python -m experiments.ce_collm`;
   load test with {clients} clients.
5. Compare against the paper's −13.8 % latency / −84.6 % cloud compute.
"""


def write_runbook(out: pathlib.Path, cfg) -> None:
  """config.json and runbook.txt into `out`; prints the runbook."""
  out.mkdir(parents=True, exist_ok=True)
  conf = dataclasses.asdict(cfg)
  (out / "config.json").write_text(json.dumps(conf, indent=1) + "\n")
  text = RUNBOOK.format(
    config=out / "config.json",
    k=cfg.split_layer,
    max_len=cfg.max_len,
    networks=list(cfg.networks),
    thetas=list(cfg.thetas),
    prompts=cfg.prompts_per_set,
    sets=", ".join(cfg.prompt_sets),
    new=cfg.max_new_tokens,
    clients=cfg.clients,
  )
  (out / "runbook.txt").write_text(text)
  print(text, flush=True)
