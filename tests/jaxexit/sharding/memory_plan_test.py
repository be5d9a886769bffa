"""Memory plans from abstract shapes: bytes per device, fit and refusal."""

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

from jaxexit.methods.dynamax import ExitClassifierConfig
from jaxexit.methods.dynamax_plan import dynamax_workload, kind_workloads
from jaxexit.models.llama import LlamaConfig, LlamaLM
from jaxexit.models.llava import LLAVA_CONFIGS
from jaxexit.sharding.activations import Stack
from jaxexit.sharding.memory_plan import (
  GiB,
  MemoryPlanError,
  Phase,
  Workload,
  abstract_mesh,
  device_memory_bytes,
  plan_memory,
  require_fit,
)
from jaxexit.sharding.workloads import (
  abstract_train_state,
  llava_train_workload,
  lm_stack,
)
from tests.tiers import slow

LLAMA = LlamaConfig(
  vocab_size=256,
  d_model=64,
  num_layers=3,
  num_heads=4,
  num_kv_heads=2,
  mlp_hidden=128,
  max_position=64,
)


def _llama_workload(cfg=LLAMA, batch=8, tokens=32):
  return Workload(
    name="tiny llama",
    trained=abstract_train_state(
      lambda: LlamaLM(cfg, rngs=nnx.Rngs(0)), optax.adamw(1e-3)
    ),
    family="llama",
    phases={"train step": Phase(batch, (lm_stack(cfg, tokens),))},
    seq_len=tokens,
    dtype=jnp.dtype(cfg.dtype).name,
  )


def _bytes(cfg) -> int:
  state = nnx.eval_shape(lambda: nnx.state(LlamaLM(cfg, rngs=nnx.Rngs(0))))
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


def test_parameter_bytes_follow_the_mesh_and_dtype():
  total = _bytes(LLAMA)
  data = plan_memory(_llama_workload(), abstract_mesh("data=8", 8), GiB)
  assert data.params == data.grads == total  # replicated
  # AdamW: mu and nu follow their parameters; + AdamW's int32 count and
  # the optimizer's uint32 step.
  assert data.optimizer == 2 * total + 8
  fsdp = plan_memory(_llama_workload(), abstract_mesh("fsdp=8", 8), GiB)
  # Every Llama array has an "embed" dimension (64 divides over 8).
  assert fsdp.params == total // 8
  assert fsdp.optimizer == 2 * total // 8 + 8
  bf16 = dataclasses.replace(
    LLAMA, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16
  )
  half = plan_memory(_llama_workload(bf16), abstract_mesh("fsdp=8", 8), GiB)
  assert half.params == fsdp.params // 2 and half.dtype == "bfloat16"
  # bf16 activations: every term but the float32 attention probabilities
  # and logits halves.
  assert fsdp.activations / 2 < half.activations < fsdp.activations


def test_activations_gathered_block_and_remat():
  cfg, batch, t = LLAMA, 8, 32
  mesh = abstract_mesh("data=2,fsdp=2,tensor=2", 8)
  plan = plan_memory(_llama_workload(), mesh, GiB)
  stack = lm_stack(cfg, t)
  d, dkv, f = cfg.d_model, cfg.num_kv_heads * cfg.head_dim, cfg.mlp_hidden
  block = 4 * (4 * d + (2 * d + 2 * dkv + 3 * f) / 2) + 4 * 4 * t / 2
  head = 2 * 4 * cfg.vocab_size / 2
  rows = batch // 4  # batch over data x fsdp
  assert plan.activations == int(rows * t * (3 * block + head))
  remat = plan_memory(_llama_workload(), mesh, GiB, remat=True)
  assert remat.activations == int(rows * t * (3 * 4 * d + block + head))
  assert stack.saved(2, True) < stack.saved(2, False)
  # fsdp 2: one block's weights and gradient gathered, over tensor 2.
  layer = 4 * (2 * d * d + 2 * d * dkv + 3 * d * f + 2 * d)
  assert plan.gathered == 2 * layer // 2
  forward = Stack(3, t, d, stack.block, forward=True)
  assert forward.saved(1, False) == t * stack.block(1)


def test_refusal_names_the_shortfall_and_a_fit_passes():
  mesh = abstract_mesh("fsdp=4", 4)
  small = plan_memory(_llama_workload(), mesh, 2**20)  # a fake 1 MiB device
  assert not small.fits and small.shortfall == small.total - 2**20
  with pytest.raises(MemoryPlanError, match=r"short by 0\.\d\d GiB per dev"):
    require_fit(small)
  remat = plan_memory(_llama_workload(), mesh, small.total, remat=True)
  tight = dataclasses.replace(small, device_bytes=remat.total)
  with pytest.raises(MemoryPlanError, match="With remat per block"):
    require_fit(tight, remat)
  big = plan_memory(_llama_workload(), mesh, GiB)
  assert big.fits and big.shortfall == 0
  require_fit(big)
  assert "fits" in big.describe() and "fsdp=4" in big.describe()
  with pytest.raises(ValueError, match="batch of 6 does not split over"):
    plan_memory(_llama_workload(batch=6), mesh, GiB)


@slow
def test_llava_7b_plans_without_allocating():
  cfg = LLAVA_CONFIGS["llava-1.5-7b"]
  workload = llava_train_workload(
    cfg, optax.adamw(1e-5), batch=16, text_tokens=96, name="LLaVA-1.5-7B"
  )
  assert workload.seq_len == 96 + 576
  params = sum(math.prod(x.shape) for x in jax.tree.leaves(workload.trained[0]))
  assert 7.0e9 < params < 7.2e9
  for axes, devices, gib, fits in (
    ("data=8", 8, 16, False),  # 26 GiB of float32 weights alone
    ("fsdp=4", 4, 95, True),
  ):
    plan = plan_memory(workload, abstract_mesh(axes, devices), gib * GiB)
    assert plan.fits is fits, plan.describe()
    assert plan.params == pytest.approx(4 * params / plan.mesh["fsdp"], 0.01)


def test_dynamax_plan_keeps_the_backbone_out_of_the_optimizer():
  backbone = dataclasses.replace(LLAMA, num_layers=4)
  sizes = ExitClassifierConfig(
    kind="mamba", num_exits=2, d_model=64, mamba_width=32
  )
  kw = dict(seq_len=32, feature_batch=4, classifier_batch=8, name="tiny")
  workloads = kind_workloads(
    backbone, sizes, ("lm_head", "mlp", "mamba"), optax.adamw(1e-3), **kw
  )
  mesh = abstract_mesh("data=4", 4)
  plans = [plan_memory(w, mesh, GiB) for w in workloads]
  frozen = _bytes(backbone)
  for plan in plans:
    assert plan.params > frozen and plan.grads == plan.params - frozen
  lm_head, mlp, mamba = plans
  assert lm_head.grads < mlp.grads and lm_head.phase == "feature pass"
  assert set(lm_head.batch) == {"feature pass"}
  assert set(mamba.batch) == {"feature pass", "classifier step"}
  with pytest.raises(ValueError, match="d_model=48 differs"):
    dynamax_workload(
      backbone,
      dataclasses.replace(sizes, d_model=48),
      optax.adamw(1e-3),
      **kw,
    )


def test_cpu_devices_share_the_host_memory():
  devices = jax.local_devices()
  assert devices[0].platform == "cpu"
  host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  assert device_memory_bytes(devices) == host // len(devices)
