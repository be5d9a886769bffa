"""Sharding: bytes per device and collective traffic; 7B memory plans.

Issue 16 item 7. Nothing here is timed: simulated CPU devices say nothing
about the speed of a pod.

Measured (`sharding_measure`). Each model family, at a small size, placed
by `jaxexit.sharding.shard_state` (default rules: embed -> fsdp; heads,
kv_heads, mlp, vocab -> tensor) on 8 simulated CPU devices under each mesh
of `MESHES`: data 8 (fsdp 1), fsdp 2, 4, 8 (the rest on data) and tensor 2
with data 4 or fsdp 4. Per (model, mesh):

* `param_bytes_per_device`, `opt_bytes_per_device`: the largest, over the
  8 devices, sum of `addressable_shards` bytes of the model's variables and
  of its `optax.adamw` state (mu, nu, count); read from the placed arrays.
  `replicated_param_bytes_per_device`: the part held by arrays with no
  sharded dimension; `fallbacks`: arrays whose rule names a mesh axis of
  size > 1 that `logical_spec` replicated instead (size not divisible).
* `comm_bytes_per_step`: collective volume of one compiled training step
  (`jaxexit.train.make_train_step`: forward, backward, AdamW update; a
  global batch of 16 split over (data, fsdp)), from the compiled HLO by
  `sharding_hlo.collective_bytes` (buffers times loop trip counts). XLA:CPU
  forms no reduce-scatter: an FSDP gradient reduction shows as an
  all-reduce of the full gradient then a slice, whose buffer is the same
  as the reduce-scatter's operand.
* `xla_temp_bytes_per_device`: the compiled step's temporary buffers
  (`memory_analysis()`, XLA:CPU); `activation_check` compares its growth
  from T = 512 to 1024 tokens with the plan's activation formula (Llama,
  Mamba).

Planned (`sharding_plans`). The three 7B paper presets (HiDrop's
LLaVA-1.5-7B, DYNAMAX's Mistral-7B and Codestral-Mamba-7B) on 8 x 16 GiB
and 4 x 95 GiB, each unsharded (data only), fsdp over all devices, and fsdp
with tensor 2: `jaxexit.sharding.plan_memory` of the workloads the
experiments check before they start (params, grads, optimizer,
activations and the fsdp-gathered block per device; formulas in
`jaxexit.sharding.memory_plan` and `jaxexit.sharding.activations`).

  python benchmarks/sharding.py --quick   # 2 models, ~2 min
  python benchmarks/sharding.py           # 6 models, ~5 min, BENCHMARKS.md

Writes `benchmarks/results/sharding{_quick}.json`: one record per
(model, mesh) ("record": "measured"), per checked model
("activation_check") and per (preset, mesh) ("plan").
"""

import argparse
import collections
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
DEVICES = 8
XLA_FLAGS = f"--xla_force_host_platform_device_count={DEVICES}"

if __name__ == "__main__" and "--child" in sys.argv:
  os.environ["XLA_FLAGS"] = XLA_FLAGS  # before jax is imported
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))  # the sibling modules below

import jax  # noqa: E402
import optax  # noqa: E402

import sharding_measure as measured  # noqa: E402
import sharding_plans as plans  # noqa: E402
from jaxexit import report  # noqa: E402
from jaxexit.train import split_train_state  # noqa: E402

MESHES = (
  "data=8",
  "data=4,fsdp=2",
  "data=2,fsdp=4",
  "fsdp=8",
  "data=4,tensor=2",
  "fsdp=4,tensor=2",
)
BATCH = measured.BATCH
PLAN_MESHES = plans.PLAN_MESHES


def collect(quick: bool, log=print) -> list[dict]:
  """Every measured and planned record (needs 8 devices)."""
  if jax.device_count() != DEVICES:
    raise RuntimeError(
      f"collect needs {DEVICES} devices (XLA_FLAGS={XLA_FLAGS}); "
      f"found {jax.device_count()}: call run()"
    )
  records = []
  for spec in measured.model_specs(quick):
    graphdef, state = split_train_state(spec.build(), optax.adamw(1e-3))
    for mesh in MESHES:
      record = measured.measure(spec, state, graphdef, mesh)
      records.append(record | {"about": spec.about})
      log(
        f"{spec.name} {mesh}: params "
        f"{record['param_bytes_per_device'] / 2**20:.1f} MiB/device, "
        f"comm {record['comm_bytes_per_step'] / 2**20:.1f} MiB/step"
      )
    if spec.config is not None:
      records.append(measured.activation_check(spec, graphdef, state))
      log(f"{spec.name}: formula / XLA {records[-1]['formula_over_xla']:.2f}")
    del state
    jax.clear_caches()
  return records + plans.plan_records(log)


def run(quick: bool, log=print) -> list[dict]:
  """`collect` here if this process has 8 devices, else in a child
  started with 8 simulated CPU devices."""
  if jax.device_count() == DEVICES and jax.default_backend() == "cpu":
    return collect(quick, log)
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / "records.json"
    command = [sys.executable, __file__, "--child", "--out", str(out)]
    env = dict(
      os.environ,
      XLA_FLAGS=XLA_FLAGS,
      JAX_PLATFORMS="cpu",
      PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    with open(pathlib.Path(tmp) / "stderr", "w+") as err:
      proc = subprocess.Popen(
        command + (["--quick"] if quick else []),
        env=env,
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
      )
      for line in proc.stdout:  # the child's progress, as it comes
        log(line.rstrip())
      if proc.wait():
        err.seek(0)
        raise RuntimeError(f"sharding child failed:\n{err.read()[-4000:]}")
    return json.loads(out.read_text())


def _mib(n) -> str:
  return "-" if n is None else f"{n / 2**20:,.1f}"


def _measured_table(measured: list[dict]) -> str:
  rows = []
  for r in measured:
    kinds = ", ".join(
      f"{k} {_mib(v)}" for k, v in r["comm_bytes_by_kind"].items()
    )
    rows.append(
      [
        r["model"],
        r["mesh"].replace(",", " "),
        f"{r['params'] / 1e6:.1f}M",
        _mib(r["param_bytes_per_device"]),
        f"{r['param_bytes_total'] / r['param_bytes_per_device']:.2f}",
        _mib(r["replicated_param_bytes_per_device"]),
        _mib(r["opt_bytes_per_device"]),
        _mib(r["comm_bytes_per_step"]),
        kinds or "-",
        ", ".join(r["fallbacks"]) or "-",
        r["involuntary_rematerializations"],
        _mib(r["xla_temp_bytes_per_device"]),
      ]
    )
  header = [
    "model",
    "mesh",
    "params",
    "param MiB/dev",
    "total/dev",
    "replicated MiB/dev",
    "AdamW MiB/dev",
    "comm MiB/step",
    "comm by kind (MiB)",
    "fallbacks",
    "XLA remats",
    "XLA temp MiB/dev",
  ]
  return report.markdown_table(header, rows)


def render(records: list[dict], quick: bool) -> str:
  """The BENCHMARKS.md section body: the tables and how they were made."""
  by = collections.defaultdict(list)
  for r in records:
    by[r["record"]].append(r)
  abouts = sorted({f"{r['model']}: {r['about']}" for r in by["measured"]})
  checks = "; ".join(
    f"{c['model']} {_mib(c['formula_delta_bytes'])} MiB vs XLA "
    f"{_mib(c['xla_temp_delta_bytes'])} MiB ({c['formula_over_xla']:.2f}x)"
    for c in by["activation_check"]
  )
  batches = "; ".join(
    f"{p['model']}: "
    + ", ".join(f"{k} {v} x {p['seq_len']}" for k, v in p["batch"].items())
    for p in {p["model"]: p for p in by["plan"]}.values()
  )
  return (
    f"8 simulated CPU devices, JAX {jax.__version__}; default rules; "
    f"global batch {BATCH} over (data, fsdp); nothing timed. Models: "
    + "; ".join(abouts)
    + ". `total/dev` = global param bytes / per-device param bytes, read "
    "from the placed arrays' shards; `replicated` = bytes of arrays no "
    "mesh axis splits; `fallbacks` = arrays a rule would shard whose "
    "dimension does not divide; `comm` = bytes one training step "
    "(forward, backward, AdamW) hands to collectives on each device, from "
    "the compiled HLO, loop bodies times their trip counts (XLA:CPU turns "
    "FSDP's reduce-scatters into all-reduces + slices: the same buffer); "
    "`XLA remats` = XLA's 'Involuntary full rematerialization' warnings "
    "while partitioning (a tensor it must replicate, then re-split); "
    "`XLA temp` = the compiled step's temporary buffers on XLA:CPU. "
    "Command: "
    f"`python benchmarks/sharding.py{' --quick' if quick else ''}`.\n\n"
    + _measured_table(by["measured"])
    + "\n\n**7B paper presets, GiB per device.** Float32 parameters, "
    "compute and AdamW moments; the presets set no remat (`act. remat`: "
    "what per-block remat would keep). `jaxexit.sharding.plan_memory` of "
    "the workloads the experiments print and check before they start "
    "(`experiments.memory_check`). Params and AdamW: `nnx.eval_shape` of "
    "the real configs through `state_shardings`, shard shapes (nothing "
    "allocated); grads = the trained params; gathered = under fsdp, 2 x "
    "the largest trained block / tensor (1 x the frozen block in a "
    "forward pass). Activations per token and block (t = tensor, 4-byte "
    "elements): transformer 4 (4D + (2D + 2Dkv + mF)/t) + 4HT/t (m = 3 "
    "SwiGLU, 2 GELU; float32 attention probabilities); Mamba-1 "
    "4 (2D + R + 2S + 6E/t) + 64ES/t (16 float32 scan tensors [T, E, S], "
    "calibrated by the Mamba check below); Mamba-2 4 (2D + (5E + 4GS + H)/t) + "
    "4 (2HQ + HKS/Q)/t; logits and their gradient 8V/t per token; times "
    "layers, or with remat 4D per layer plus one block; times tokens and "
    "rows per device. HiDrop trains every parameter (CLIP over 577 "
    "tokens, the LM over LLaVA's prompt: 96 text tokens + 576 image "
    "tokens); DYNAMAX freezes the backbone and trains the exit classifiers "
    "(the kind that needs most: mamba), so its largest phase is "
    "either the feature pass (forward: cache, kept features, one block) or "
    "the classifier step. Batches: " + batches + ". Fits: total <= device "
    "memory, with nothing left for XLA's own buffers. Check of the "
    "formula against XLA:CPU's temp bytes, their growth from T = "
    f"{measured.CHECK_TOKENS} to {2 * measured.CHECK_TOKENS} tokens at "
    f"data=8 ({BATCH // DEVICES} rows per device; the Mamba's scan term is "
    "calibrated on it): "
    + (checks or "not run")
    + ".\n\n"
    + plans.plan_table(by["plan"])
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="2 small models")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--out", type=pathlib.Path, help=argparse.SUPPRESS)
  args = parser.parse_args()
  start = time.perf_counter()
  log = lambda msg: print(f"[{time.perf_counter() - start:5.0f} s] {msg}")
  if args.child:
    records = collect(args.quick, lambda msg: (log(msg), sys.stdout.flush()))
    args.out.write_text(json.dumps(records))
    return
  records = run(args.quick, print)
  text_md = render(records, args.quick)
  print(text_md)
  name = "sharding_quick.json" if args.quick else "sharding.json"
  report.write_json(HERE / "results" / name, records)
  if not args.quick:
    report.write_section(BENCHMARKS_MD, "sharding", text_md)


if __name__ == "__main__":
  main()
