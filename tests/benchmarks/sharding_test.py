import importlib.util
import pathlib
import sys

import pytest
from tests.tiers import slow

_PATH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"
_SPEC = importlib.util.spec_from_file_location(
  "sharding_bench", _PATH / "sharding.py"
)
bench = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = bench
_SPEC.loader.exec_module(bench)
import sharding_hlo  # noqa: E402 (benchmarks/, put on sys.path by bench)

GiB = 2**30

# A scheduled module in XLA's text form: a while loop of 3 known iterations
# whose body all-reduces a tuple and reduce-scatters over groups of 4, and
# an entry that all-gathers once.
_HLO = "\n".join(
  [
    "HloModule jit_step, entry_computation_layout={(f32[8]{0})->f32[8]{0}}",
    "",
    "%add (x: f32[], y: f32[]) -> f32[] {",
    "  %x = f32[] parameter(0)",
    "  %y = f32[] parameter(1)",
    "  ROOT %add = f32[] add(%x, %y)",
    "}",
    "",
    "%body (p: (s32[], f32[16,8])) -> (s32[], f32[16,8]) {",
    "  %p = (s32[], f32[16,8]{1,0}) parameter(0)",
    "  %all-reduce.1 = (f32[16,8]{1,0}, /*index=1*/bf16[4]{0}) "
    "all-reduce(%a, %b), channel_id=1, "
    "replica_groups=mesh['data'=2,'fsdp'=4] {'data'}, to_apply=%add",
    "  %reduce-scatter.2 = f32[4,8]{1,0} reduce-scatter(%c), channel_id=2, "
    "replica_groups=[2,4]<=[8], dimensions={0}, to_apply=%add",
    "  ROOT %t = (s32[], f32[16,8]{1,0}) tuple(%i, %g)",
    "}",
    "",
    "%cond (p: (s32[], f32[16,8])) -> pred[] {",
    "  ROOT %lt = pred[] compare(%i, %n), direction=LT",
    "}",
    "",
    "ENTRY %main (x: f32[8]) -> f32[8] {",
    "  %x = f32[8]{0} parameter(0)",
    "  %all-gather.3 = f32[64]{0} all-gather(%x), channel_id=3, "
    "replica_groups={{0,1,2,3,4,5,6,7}}, dimensions={0}",
    "  %while.4 = (s32[], f32[16,8]{1,0}) while(%init), condition=%cond, "
    'body=%body, backend_config={"known_trip_count":{"n":"3"}}',
    "  ROOT %r = f32[8]{0} slice(%all-gather.3), slice={[0:8]}",
    "}",
  ]
)


def test_collective_bytes_counts_buffers_times_loop_trips():
  out = sharding_hlo.collective_bytes(_HLO, devices=8)
  all_reduce = 3 * (16 * 8 * 4 + 4 * 2)  # f32 + bf16 tuple, 3 trips
  reduce_scatter = 3 * (4 * 8 * 4) * 4  # the operand: result x group of 4
  all_gather = 64 * 4
  assert out["by_kind"] == {
    "all-gather": all_gather,
    "all-reduce": all_reduce,
    "reduce-scatter": reduce_scatter,
  }
  assert out["bytes"] == all_gather + all_reduce + reduce_scatter
  assert out["ops"] == {"all-gather": 1, "all-reduce": 3, "reduce-scatter": 3}
  assert out["unknown_trip_counts"] == 0
  shape = "(f32[2,3]{1,0}, s32[], pred[5])"
  assert sharding_hlo.shape_bytes(shape) == 24 + 4 + 5


def test_collective_bytes_refuses_async_collectives():
  hlo = _HLO.replace("all-gather(%x)", "all-gather-start(%x)")
  with pytest.raises(ValueError, match="asynchronous collective"):
    sharding_hlo.collective_bytes(hlo, devices=8)


@pytest.fixture(scope="module")
def records():
  return bench.run(True, log=lambda msg: None)


def _measured(records, model):
  return {
    r["mesh"]: r
    for r in records
    if r["record"] == "measured" and r["model"] == model
  }


@slow
def test_fsdp_divides_llama_parameter_and_optimizer_bytes(records):
  llama = _measured(records, "llama")
  one = llama["data=8,fsdp=1,tensor=1"]
  assert one["param_bytes_per_device"] == one["param_bytes_total"]
  for n, mesh in ((2, "data=4,fsdp=2"), (4, "data=2,fsdp=4"), (8, "fsdp=8")):
    r = llama[_full(mesh)]
    # Every Llama array (norms included) has an "embed" dimension; only
    # arrays no mesh axis splits could keep it above total / n.
    ideal = one["param_bytes_per_device"] / n
    assert ideal <= r["param_bytes_per_device"]
    assert r["param_bytes_per_device"] <= (
      ideal + r["replicated_param_bytes_per_device"] + 1024
    )
    assert r["param_bytes_per_device"] == pytest.approx(ideal, rel=0.02)
    # AdamW's mu and nu follow their parameters: twice the bytes.
    assert r["opt_bytes_per_device"] == pytest.approx(
      2 * r["param_bytes_per_device"], rel=0.01
    )
  assert llama["data=4,fsdp=1,tensor=2"]["param_bytes_per_device"] == (
    pytest.approx(one["param_bytes_per_device"] / 2, rel=0.02)
  )


def _full(mesh: str) -> str:
  sizes = dict(part.split("=") for part in mesh.split(","))
  return ",".join(f"{a}={sizes.get(a, 1)}" for a in ("data", "fsdp", "tensor"))


@slow
def test_data_parallel_step_all_reduces_the_gradients(records):
  for model in ("llama", "mamba"):
    rows = _measured(records, model)
    data = rows["data=8,fsdp=1,tensor=1"]
    kinds = data["comm_bytes_by_kind"]
    total = data["param_bytes_total"]
    # Every gradient is all-reduced once; a tied embedding's two gradients
    # (lookup and LM head) are reduced before they are added.
    assert total <= kinds["all-reduce"] <= 1.5 * total, (model, kinds)
    assert "all-to-all" not in kinds and "collective-permute" not in kinds
    assert data["comm_bytes_per_step"] > 0
    # Sharding weights over fsdp adds their all-gathers on top.
    assert rows["data=1,fsdp=8,tensor=1"]["comm_bytes_per_step"] > (
      1.5 * data["comm_bytes_per_step"]
    )
  mamba = _measured(records, "mamba")["data=8,fsdp=1,tensor=1"]
  assert set(mamba["comm_bytes_by_kind"]) == {"all-reduce"}
  # Mamba's replicated SSM arrays (conv, x_proj, dt_proj, A, D) stay whole
  # under fsdp: the measured bytes show them.
  fsdp8 = _measured(records, "mamba")["data=1,fsdp=8,tensor=1"]
  assert fsdp8["replicated_param_bytes_per_device"] > 0
  assert fsdp8["param_bytes_per_device"] > mamba["param_bytes_total"] / 8


@slow
def test_memory_plan_of_7b_presets_per_mesh(records):
  plans = [r for r in records if r["record"] == "plan"]
  meshes = {
    (devices, gib, _full(m))
    for devices, gib, ms in bench.PLAN_MESHES
    for m in ms
  }
  for model in {p["model"] for p in plans}:
    got = {
      (p["devices"], p["device_gib"], p["mesh"])
      for p in plans
      if p["model"] == model
    }
    assert got == meshes, model
  for p in plans:
    for key in ("param_bytes_per_device", "activation_bytes_per_device"):
      assert p[key] > 0, (p["model"], p["mesh"], key)
    assert p["total_bytes_per_device"] >= (
      p["param_bytes_per_device"] + p["opt_bytes_per_device"]
    )
  hidrop = {p["mesh"]: p for p in plans if p["model"].startswith("hidrop")}
  unsharded = hidrop["data=8,fsdp=1,tensor=1"]
  # A 7B model in float32 with AdamW: > 100 GiB of state on every device
  # of a data-only mesh, far past 16 GB.
  state = sum(
    unsharded[k]
    for k in (
      "param_bytes_per_device",
      "grad_bytes_per_device",
      "opt_bytes_per_device",
    )
  )
  assert state > 100 * GiB and not unsharded["fits"]
  assert not unsharded["fits_remat"]
  fsdp = hidrop["data=1,fsdp=8,tensor=1"]
  assert fsdp["param_bytes_per_device"] == pytest.approx(
    unsharded["param_bytes_per_device"] / 8, rel=0.01
  )
  assert hidrop["data=1,fsdp=4,tensor=1"]["fits"]  # 4 x 95 GB
  text = bench.render(records, True)
  assert "| llama | data=4 fsdp=2 tensor=1 |" in text
  assert "| hidrop paper: LLaVA-1.5-7B | 8 x 16 GiB |" in text
