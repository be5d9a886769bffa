"""CE-CoLLM cloud: batching concurrent sessions' catch-ups, side by side.

N collaborative edge clients at θ = 1 (every token a cloud catch-up) load
one in-process cloud server on loopback (`jaxexit.serve.load.run_load`:
each client alone, then all N together). Two servers of the same model
run interleaved in one process: one computes each session's catch-up on
its own (`max_batch=1`), the other batches the catch-ups of coinciding
requests into one compiled call (`max_batch=B`,
`jaxexit.serve.cloud_batch`). Each (N, server) is warmed up once (the
batched shapes compile there), then measured `repeats` times; reported:
median requests/s and per-request latency p50 / p99 of the concurrent
phase, the ratio of batched to unbatched requests/s, the batch sizes the
batching server ran, and mismatched clients (answers that differ from the
client's run alone: must be 0).

  python benchmarks/cloud_batching.py --quick   # tiny random Llama, ~1 min
  python benchmarks/cloud_batching.py           # SmolLM2 k=15, BENCHMARKS.md

Writes `benchmarks/results/cloud_batching{_quick}.json`, one record per
(clients, max_batch).
"""

import argparse
import dataclasses
import os
import pathlib
import statistics
import time

import jax
import numpy as np

from jaxexit import report
from jaxexit.data import add_data_dir_flag
from jaxexit.serve import cloud, edge, edge_link, launch, load, models
from jaxexit.serve import server_config

HERE = pathlib.Path(__file__).resolve().parent
BENCHMARKS_MD = HERE.parent / "BENCHMARKS.md"


@dataclasses.dataclass(frozen=True)
class Settings:
  """One run's sizes.

  Attributes:
    model, k: served model (`jaxexit.serve.models`) and split layer.
    clients: N values.
    max_batch: B of the batching server.
    window_ms: its batching window.
    tokens: tokens per answer.
    prompt_tokens: prompts are cut to their last tokens.
    max_len: positions per session.
    repeats: measured load runs per (N, server).
  """

  model: str
  k: int
  clients: tuple[int, ...]
  max_batch: int
  window_ms: float
  tokens: int
  prompt_tokens: int
  max_len: int
  repeats: int


FULL = Settings("smollm2", 15, (4, 8), 8, 5.0, 8, 64, 128, 3)
QUICK = Settings("tiny", 2, (4,), 4, 5.0, 6, 12, 64, 2)


def _prompts(s: Settings, backbone, data_dir) -> tuple[list[list[int]], str]:
  """N prompts' token ids and a description."""
  n = max(s.clients)
  if s.model == "tiny":
    rng = np.random.default_rng(0)
    ids = [
      rng.integers(0, backbone.vocab_size, 8 + i).tolist() for i in range(n)
    ]
    return ids, f"{n} random prompts of 8..{7 + n} tokens"
  from jaxexit.data.gguf_tokenizer import GGUFTokenizer
  from jaxexit.data.reasoning import load_problems
  from jaxexit.models.gguf_weights import smollm2_gguf_path

  tok = GGUFTokenizer.from_gguf(smollm2_gguf_path())
  out = []
  for p in load_problems("gsm8k", data_dir=data_dir)[:n]:
    chat = [{"role": "user", "content": p.question}]
    out.append(tok.encode(tok.apply_chat_template(chat))[-s.prompt_tokens :])
  return (
    out,
    f"the first {n} GSM8K test questions (chat template, last "
    f"{s.prompt_tokens} tokens)",
  )


def _clients(backbone, digest, s, target, tokens, n):
  cfg = edge.EdgeConfig(mode="collaborative", theta=1.0, quant="fp16")
  return [
    edge.EdgeClient(
      backbone,
      s.k,
      config=cfg,
      link=edge_link.CloudLink(
        target,
        token=list(tokens)[i],
        model_hash=digest,
        split_layer=s.k,
        deadline_s=120.0,
      ),
      max_len=s.max_len,
    )
    for i in range(n)
  ]


def _load(backbone, digest, s, handle, tokens, n, prompts):
  clients = _clients(backbone, digest, s, handle.target, tokens, n)
  try:
    return load.run_load(
      clients, prompts, s.tokens, store_stats=handle.service.store.stats
    )
  finally:
    for c in clients:
      c.link.close()


def run(quick: bool, log=print, data_dir=None) -> tuple[list[dict], str]:
  """Measures both servers at every N; (records, description)."""
  s = QUICK if quick else FULL
  backbone = models.build_model(s.model)
  digest = models.weights_hash(backbone)
  prompts, about = _prompts(s, backbone, data_dir)
  tokens = {launch.new_token(): f"client-{i}" for i in range(max(s.clients))}
  servers = {}
  for b in (1, s.max_batch):
    config = server_config.ServerConfig(
      max_len=s.max_len,
      max_batch=b,
      batch_window_ms=s.window_ms,
      max_workers=max(s.clients) + 2,
    )
    servers[b] = cloud.start_server(
      backbone,
      s.k,
      tokens=tokens,
      config=config,
      model_hash=digest,
      warmup=True,
    )
  records = []
  try:
    for n in s.clients:
      runs = {b: [] for b in servers}
      for b, handle in servers.items():  # Warm-up: compiles batch shapes.
        _load(backbone, digest, s, handle, tokens, n, prompts)
      for _ in range(s.repeats):
        for b, handle in servers.items():
          runs[b].append(_load(backbone, digest, s, handle, tokens, n, prompts))
      base = statistics.median(r.requests_per_s for r in runs[1])
      for b, reps in runs.items():
        batcher = servers[b].service.batcher
        rec = {
          "clients": n,
          "max_batch": b,
          "requests_per_s": statistics.median(r.requests_per_s for r in reps),
          "latency_p50_ms": statistics.median(r.latency_p50_ms for r in reps),
          "latency_p99_ms": statistics.median(r.latency_p99_ms for r in reps),
          "alone_latency_p50_ms": statistics.median(
            r.alone_latency_p50_ms for r in reps
          ),
          "mismatched": sum(r.mismatched for r in reps),
          "fallbacks": sum(r.fallbacks for r in reps),
          "batch_sizes": {} if batcher is None else dict(batcher.batch_sizes),
          "repeats": len(reps),
        }
        rec["speedup_vs_unbatched"] = rec["requests_per_s"] / base
        records.append(rec)
        log(
          f"N={n} max_batch={b}: {rec['requests_per_s']:.1f} req/s "
          f"({rec['speedup_vs_unbatched']:.2f}x), p50 "
          f"{rec['latency_p50_ms']:.1f} ms, p99 {rec['latency_p99_ms']:.1f} "
          f"ms, mismatched {rec['mismatched']}"
        )
  finally:
    for handle in servers.values():
      handle.stop(5.0)
  desc = (
    f"{'tiny random 4-block Llama' if quick else 'SmolLM2-135M-Instruct'} "
    f"split at k={s.k}; {about}; θ = 1 (every token a catch-up), "
    f"{s.tokens} tokens per answer, fp16 transport, in-process gRPC server "
    f"on loopback; batching server max_batch={s.max_batch}, window "
    f"{s.window_ms:g} ms; median of {s.repeats} interleaved load runs after "
    f"1 warm-up per (N, server); {os.cpu_count()} CPU cores (shared), JAX "
    f"{jax.__version__}"
  )
  return records, desc


def render(records: list[dict], about: str, quick: bool) -> str:
  header = [
    "clients",
    "max_batch",
    "requests/s",
    "vs unbatched",
    "p50 ms",
    "p99 ms",
    "alone p50 ms",
    "batch sizes run",
    "mismatched",
  ]
  rows = [
    [
      r["clients"],
      r["max_batch"],
      f"{r['requests_per_s']:.1f}",
      f"{r['speedup_vs_unbatched']:.2f}x",
      f"{r['latency_p50_ms']:.1f}",
      f"{r['latency_p99_ms']:.1f}",
      f"{r['alone_latency_p50_ms']:.1f}",
      ", ".join(f"{k}: {v}" for k, v in sorted(r["batch_sizes"].items()))
      or "-",
      r["mismatched"],
    ]
    for r in records
  ]
  cmd = f"python benchmarks/cloud_batching.py{' --quick' if quick else ''}"
  return f"{about}. Command: `{cmd}`.\n\n" + report.markdown_table(header, rows)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny Llama")
  add_data_dir_flag(parser)
  args = parser.parse_args()
  start = time.perf_counter()
  log = lambda msg: print(f"[{time.perf_counter() - start:5.0f} s] {msg}")  # noqa: E731
  records, about = run(args.quick, log, args.data_dir)
  text = render(records, about, args.quick)
  print(text)
  name = "cloud_batching_quick.json" if args.quick else "cloud_batching.json"
  report.write_json(HERE / "results" / name, records)
  if not args.quick:
    report.write_section(BENCHMARKS_MD, "cloud_batching", text)


if __name__ == "__main__":
  main()
