"""Planned: the 7B paper presets' per-device memory on 16 and 95 GiB meshes.

The workloads are the experiments' own (`experiments.hidrop.paper.
workload`, `experiments.dynamax.scale.workloads`), the plans
`jaxexit.sharding.plan_memory` on device-free meshes (`abstract_mesh`):
params and optimizer bytes from `nnx.eval_shape` of the real configs
through `state_shardings`, nothing allocated. Each preset's plan is at its
own setting (float32, no remat) with the remat-per-block plan beside it;
DYNAMAX's is that of the classifier kind that needs most. Part of
`benchmarks/sharding.py`.
"""

from experiments.dynamax import configs as dynamax_configs
from experiments.dynamax import scale
from experiments.hidrop import configs as hidrop_configs
from experiments.hidrop import paper
from jaxexit import report
from jaxexit.sharding.memory_plan import (
  GiB,
  Workload,
  abstract_mesh,
  plan_memory,
)

PLAN_MESHES = (  # (devices, GiB per device, meshes)
  (8, 16, ("data=8", "fsdp=8", "fsdp=4,tensor=2")),
  (4, 95, ("data=4", "fsdp=4", "fsdp=2,tensor=2")),
)


def preset_workloads() -> list[list[Workload]]:
  """Per paper preset, the workloads its run may hold."""
  hidrop = paper.workload(hidrop_configs.get_config("paper"))
  dynamax = dynamax_configs.get_config("paper")
  return [[hidrop]] + [
    scale.workloads(dynamax, kind, None) for kind in scale.PAPER_BACKBONES
  ]


def plan_record(workloads: list[Workload], mesh_axes: str, devices, gib):
  """One "plan" record: the largest workload's plan, with and without
  remat per block, on `devices` devices of `gib` GiB."""
  mesh = abstract_mesh(mesh_axes, devices)
  plans = [plan_memory(w, mesh, gib * GiB) for w in workloads]
  plan = max(plans, key=lambda p: p.total)
  remat = plan_memory(workloads[plans.index(plan)], mesh, gib * GiB, remat=True)
  return {
    "record": "plan",
    "model": plan.workload,
    "mesh": plan.mesh_text,
    **plan.mesh,
    "devices": devices,
    "device_gib": gib,
    "trainable": plan.trainable,
    "dtype": plan.dtype,
    "remat": "none (preset)",
    "seq_len": plan.seq_len,
    "batch": plan.batch,
    "param_bytes_per_device": plan.params,
    "grad_bytes_per_device": plan.grads,
    "opt_bytes_per_device": plan.optimizer,
    "phase": plan.phase,
    "gathered_bytes_per_device": plan.gathered,
    "activation_bytes_per_device": plan.activations,
    "total_bytes_per_device": plan.total,
    "fits": plan.fits,
    "activation_remat_bytes_per_device": remat.activations,
    "total_remat_bytes_per_device": remat.total,
    "fits_remat": remat.fits,
  }


def plan_records(log=print) -> list[dict]:
  """Every preset on every mesh of `PLAN_MESHES`."""
  records = []
  for workloads in preset_workloads():
    for devices, gib, meshes in PLAN_MESHES:
      for mesh in meshes:
        records.append(plan_record(workloads, mesh, devices, gib))
    log(f"plan {records[-1]['model']}")
  return records


def _gib(n) -> str:
  return f"{n / GiB:,.2f}"


def plan_table(plans: list[dict]) -> str:
  """The plans as a markdown table, GiB per device."""
  rows = [
    [
      p["model"],
      f"{p['devices']} x {p['device_gib']} GiB",
      p["mesh"].replace(",", " "),
      _gib(p["param_bytes_per_device"]),
      _gib(p["grad_bytes_per_device"]),
      _gib(p["opt_bytes_per_device"]),
      p["phase"],
      _gib(p["activation_bytes_per_device"]),
      _gib(p["gathered_bytes_per_device"]),
      _gib(p["total_bytes_per_device"]),
      "yes" if p["fits"] else "no",
      _gib(p["activation_remat_bytes_per_device"]),
      _gib(p["total_remat_bytes_per_device"]),
      "yes" if p["fits_remat"] else "no",
    ]
    for p in plans
  ]
  header = [
    "preset",
    "devices",
    "mesh",
    "params",
    "grads",
    "AdamW",
    "largest phase",
    "activations",
    "gathered",
    "total",
    "fits",
    "act. remat",
    "total remat",
    "fits remat",
  ]
  return report.markdown_table(header, rows)
