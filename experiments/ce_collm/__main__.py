"""python -m experiments.ce_collm — CE-CoLLM: edge/cloud collaborative LLM.

Starts the cloud server (`python -m jaxexit.serve.cloud`, a per-run
client token, plaintext on 127.0.0.1 with `--insecure-local`) and one
shaping proxy per network setting (`python -m jaxexit.serve.netshape`)
as subprocesses, waits for their `listening on` lines, runs the edge in
this process in every mode, and stops the processes in a `finally`
(SIGTERM or Ctrl-C included). Modes: standalone (never asks the cloud),
collaborative per θ (the context manager: states uploaded in the
background, exact catch-up), naive per θ (no context manager: the whole
context on each request, `jaxexit.serve.edge_naive`) and cloud_only (the
baseline), and latency-aware per c (collaborative, θ = 1 as the floor,
the threshold lowered by the measured request time:
`jaxexit.serve.edge.latency_aware_theta`). Each mode but latency-aware
also runs once straight to the cloud (unshaped) to price the §4.2
formula. Writes into --out:

  results.json  {"records": one per mode × θ × network setting: mode,
                theta, error_cost_s, theta_in_force_mean, rtt_ms,
                bandwidth_mbit, quant, latency_per_token_ms,
                bytes_per_token, cloud_request_rate, cloud_flops_fraction,
                quality, quality_ci, agreement_with_cloud_only,
                predicted_latency_per_token_ms, latency_change and
                cloud_compute_change (verdicts), per_prompt; "headline",
                "quantisation", "load", "processes", "config"}
  results.md    the table, the paper's headline, verdicts, load figures
  tradeoff.png  latency and cloud compute vs quality over θ
  log.txt       everything printed

Presets and commands: configs.py. `--preset paper` writes config.json and
runbook.txt only.
"""

import argparse
import dataclasses
import pathlib
import signal
import tempfile
import time

import numpy as np

from experiments.ce_collm import configs, edge_head, plots, run, summary
from experiments.ce_collm import report as ce_report
from experiments import cli
from experiments.cli import Log
from jaxexit import results_store
from jaxexit.data import add_data_dir_flag
from jaxexit.serve import launch, wire
from jaxexit.train.fingerprint import to_jsonable


def _floats(flag: str, check=None):
  def parse(value: str) -> tuple[float, ...]:
    try:
      xs = tuple(float(v) for v in value.split(","))
    except ValueError:
      raise argparse.ArgumentTypeError(
        f"{flag} takes a number or a comma list; got {value!r}"
      ) from None
    for x in xs:
      try:
        (check or (lambda _: None))(x)
      except ValueError as e:
        raise argparse.ArgumentTypeError(f"{flag}: {e}") from None
    return xs

  return parse


def _nonneg(x):
  if not x >= 0:
    raise ValueError(f"value {x} must be >= 0")


def _positive(x):
  if not x > 0:
    raise ValueError(f"value {x} must be > 0")


def parse_args(argv=None):
  p = argparse.ArgumentParser(
    prog="python -m experiments.ce_collm",
    description=__doc__.splitlines()[0].split(" — ")[1],
  )
  p.add_argument("--preset", default="smoke", choices=sorted(configs.PRESETS))
  p.add_argument("--split-layer", type=int, default=None, help="k")
  p.add_argument(
    "--theta",
    type=_floats("--theta", configs.check_theta),
    default=None,
    help="θ in [0, 1], one value or a comma sweep",
  )
  p.add_argument("--rtt-ms", type=_floats("--rtt-ms", _nonneg))
  p.add_argument(
    "--bandwidth-mbit", type=_floats("--bandwidth-mbit", _positive)
  )
  p.add_argument("--quant", choices=wire.MODES, default=None)
  p.add_argument(
    "--edge-head",
    choices=configs.EDGE_HEADS,
    default=None,
    help="the edge's exit head: an adapter trained at k (default) or the "
    "shared LM head",
  )
  p.add_argument("--clients", type=int, default=None, help="load test, ≤ 32")
  p.add_argument("--out", type=pathlib.Path, default=None)
  p.add_argument("--no-progress", action="store_true")
  add_data_dir_flag(p)
  cli.add_device_flags(p)
  args = p.parse_args(argv)
  try:
    args.config = _config(args)
  except ValueError as e:
    p.error(str(e))
  return args


def _networks(args, base) -> tuple:
  rtts = args.rtt_ms or tuple(n[0] for n in base.networks)
  bws = args.bandwidth_mbit or tuple(n[1] for n in base.networks)
  if len(rtts) == 1 and len(bws) > 1:
    rtts = rtts * len(bws)
  if len(bws) == 1 and len(rtts) > 1:
    bws = bws * len(rtts)
  if len(rtts) != len(bws):
    raise ValueError(
      f"--rtt-ms has {len(rtts)} values and --bandwidth-mbit {len(bws)}; "
      "give one of each per network setting (or one to share)"
    )
  return tuple(zip(rtts, bws))


def _config(args) -> configs.Config:
  base = configs.PRESETS[args.preset]
  over = {"networks": _networks(args, base)}
  if args.split_layer is not None:
    configs.check_split_layer(base.model, args.split_layer)
    over["split_layer"] = args.split_layer
  if args.theta:
    over["thetas"] = args.theta
    below = [t for t in args.theta if t < 1]
    over["naive_thetas"] = (max(below),) if below else ()
  if args.quant:
    over["quant"] = args.quant
  if args.edge_head:
    over["edge_head"] = args.edge_head
  if args.clients is not None:
    over["clients"] = args.clients
  return configs.get_config(args.preset, **over)


def main(argv=None) -> int:
  args = parse_args(argv)
  cfg = args.config
  if args.out is None:
    args.out = pathlib.Path(f"runs/ce_collm_{args.preset}")
  devices = cli.setup_devices(args)
  if args.preset == "paper":
    if devices.main:
      ce_report.write_runbook(args.out, cfg)
    return 0
  with cli.output_dir(args.out):
    _main(args, cfg, devices.main)
  return 0


def _plan(cfg, shaped=True) -> list[tuple[str, float | None]]:
  """(mode, θ — or c for latency_aware) per run. The unshaped pass skips
  latency_aware: its decisions depend on the link, so they would not be
  the shaped run's."""
  plan = [("cloud_only", None)]
  plan += [("collaborative", t) for t in cfg.thetas]
  if shaped:
    plan += [("latency_aware", c) for c in cfg.error_costs_s]
  return plan + [("naive", t) for t in cfg.naive_thetas]


def _on_sigterm(*_):
  raise KeyboardInterrupt("SIGTERM")


def _main(args, cfg: configs.Config, main: bool) -> None:
  out, t0 = args.out, time.perf_counter()
  log = Log(out / "log.txt")
  stamp = lambda: f"[{time.perf_counter() - t0:6.1f} s]"  # noqa: E731
  previous = signal.signal(signal.SIGTERM, _on_sigterm)
  children = launch.Children()
  try:
    with tempfile.TemporaryDirectory(prefix="ce_collm_") as tmp:
      token = launch.new_token()
      tokens = launch.write_tokens_file(f"{tmp}/tokens.txt", {"edge": token})
      cloud = children.start(
        "cloud",
        launch.cloud_command(
          cfg.model, cfg.split_layer, tokens_file=tokens, max_len=cfg.max_len
        ),
        env={"XLA_PYTHON_CLIENT_PREALLOCATE": "false"},
      )
      model = run.load_model(cfg)  # While the cloud loads and compiles.
      prompts = run.load_prompts(cfg, model, args.data_dir)
      model = dataclasses.replace(
        model,
        edge=edge_head.build(
          cfg,
          model.backbone,
          model.tokenizer,
          out / "edge_head",
          args.data_dir,
          lambda msg: log(stamp(), msg),
        ),
      )
      log(
        stamp(),
        f"model: {model.description}, k={cfg.split_layer}; "
        f"{len(prompts)} prompts",
      )
      target = cloud.wait_listening()
      log(stamp(), f"cloud pid {cloud.pid} listening on {target}")
      proxies = {}
      for net in cfg.networks:
        child = children.start(
          f"proxy {net[0]:g} ms / {net[1]:g} Mbit",
          launch.proxy_command(target, rtt_ms=net[0], bandwidth_mbit=net[1]),
        )
        proxies[net] = child.wait_listening(60)
        log(stamp(), f"{child.name}: pid {child.pid} on {proxies[net]}")
      runs = _measure(model, cfg, prompts, target, proxies, token, log, stamp)
  finally:
    codes = children.stop()
    signal.signal(signal.SIGTERM, previous)
    left = [p for p in children.pids if launch.pid_alive(p)]
    log(stamp(), f"stopped {codes}; processes left running: {left or 'none'}")
  processes = {"pids": children.pids, "exit_codes": codes, "left": left}
  _write(args, cfg, model, prompts, runs, processes, log, stamp, main)


def _measure(model, cfg, prompts, target, proxies, token, log, stamp) -> dict:
  eos = model.eos_id
  runs = {}

  def go(mode, value, net, where):
    c = run.make_client(model, cfg, mode, value, target=where, token=token)
    rs = run.run_all(c, prompts, cfg, eos)
    runs[(mode, value, net)] = rs
    n = sum(len(r.tokens) for r in rs)
    cloud = sum(sum(r.cloud) for r in rs)
    what = "-" if value is None else f"{value:g}"
    if mode == "latency_aware":
      thetas = [t for r in rs for t in r.thetas]
      what = f"1, c={value:g} s (mean θ {np.mean(thetas):.3f})"
    log(
      stamp(),
      f"{mode:13s} θ={what:6s} "
      f"{'unshaped' if net is None else f'{net[0]:g} ms/{net[1]:g} Mbit':16s}"
      f" {1e3 * sum(r.wall_s for r in rs) / n:7.1f} ms/token, "
      f"{cloud}/{n} cloud, {sum(r.bytes for r in rs) / n:8.0f} B/token"
      + (
        f", {sum(r.fallback is not None for r in rs)} fall-backs"
        if any(r.fallback for r in rs)
        else ""
      ),
    )

  # Untimed: compiles the edge for every prompt length (the jit cache is
  # shared by all clients of this backbone).
  run.run_all(
    run.make_client(model, cfg, "standalone", None), prompts, cfg, eos
  )
  go("standalone", None, None, None)
  for mode, theta in _plan(cfg, shaped=False):
    go(mode, theta, None, target)
  for net, where in proxies.items():
    for mode, theta in _plan(cfg):
      go(mode, theta, net, where)
  return runs


def _write(
  args, cfg, model, prompts, runs, processes, log, stamp, main: bool
) -> None:
  out = args.out
  nets = list(cfg.networks)
  ref = runs[("cloud_only", None, nets[0])]
  drift = sum(
    a.tokens != b.tokens
    for key, rs in runs.items()
    if key[0] == "cloud_only"
    for a, b in zip(rs, ref)
  )
  records = [
    summary.record(
      "standalone", None, None, runs[("standalone", None, None)], ref, cfg
    )
  ]
  for net in nets:
    for mode, value in _plan(cfg):
      records.append(
        summary.record(
          mode,
          value,
          net,
          runs[(mode, value, net)],
          ref,
          cfg,
          unshaped=runs.get((mode, value, None)),
        )
      )
  summary.add_verdicts(records)
  quant = run.quant_probe(model, cfg, prompts)
  log(
    stamp(),
    "transport quantisation vs fp32: "
    + ", ".join(
      f"{m} max|Δlogit| {q['max_abs_error']:.2e} "
      f"top-1 {q['top1_agreement']:.2f}"
      for m, q in quant.items()
    ),
  )
  load = None
  if cfg.clients:
    load = ce_report.load_test(model, cfg, prompts)
    log(stamp(), "load test (in-process cloud on loopback): " + load.summary())
  records = summary.strip_private(records)
  heads = summary.headline(records, cfg.comparable_quality)
  extra = {
    "model": model.description,
    "edge_head": {
      "kind": model.edge.kind,
      "agreement_before": model.edge.agreement_before,
      "agreement_after": model.edge.agreement_after,
      "description": model.edge.description,
    },
    "prompts": [
      {"set": p.set, "id": p.id, "tokens": len(p.ids)} for p in prompts
    ],
    "cloud_only_drift": int(drift),
    "headline": [
      {
        "mode": h["mode"],
        "theta": h["theta"],
        "error_cost_s": h["error_cost_s"],
        "rtt_ms": h["rtt_ms"],
        "bandwidth_mbit": h["bandwidth_mbit"],
      }
      for h in heads
    ],
    "quantisation": quant,
    "load": None if load is None else dataclasses.asdict(load),
    "processes": processes,
    "config": to_jsonable(cfg, "config"),
  }
  if not main:
    return
  results_store.write_json_atomic(
    out / "results.json", {"records": records, **extra}
  )
  (out / "results.md").write_text(
    ce_report.markdown(args.preset, cfg, model, records, heads, extra)
  )
  plots.write_tradeoff(
    out / "tradeoff.png",
    records,
    f"CE-CoLLM ({args.preset}): {model.description}, k={cfg.split_layer}",
  )
  log(stamp(), f"wrote {out}/results.json, results.md, tradeoff.png")


if __name__ == "__main__":
  raise SystemExit(main())
