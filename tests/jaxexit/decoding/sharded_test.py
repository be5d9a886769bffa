"""Decoding with a sharded batch, parameters and caches.

On one device: `shard_caches` leaves caches alone without a mesh and
names a cache leaf it has no row for; `host_values` passes local arrays
through. The 8-device child (`python sharded_test.py --child`) places a
tiny Llama and a tiny Mamba with `shard_state` on mesh (data 2, fsdp 2,
tensor 2), splits the prompts over (data, fsdp), and checks that
`generate` (propagate, freeze, recompute, oracle), `generate_full` and
`generate_self_speculative` give the one-device tokens and exit
accounting, and that the engine's caches are split over the devices.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from tests.jaxexit.sharding.device_children import child_env, run_children
from tests.tiers import slow

if __name__ == "__main__":  # The child checks shapes like conftest.
  from jaxtyping import install_import_hook

  install_import_hook(["jaxexit"], "beartype.beartype")

from jaxexit import sharding  # noqa: E402
from jaxexit.decoding import (  # noqa: E402
  STATE_MODES,
  DecodeConfig,
  LMHeadExits,
  engine,
  generate,
  generate_full,
  generate_self_speculative,
)
from jaxexit.decoding.sharded import host_values, shard_caches  # noqa: E402
from jaxexit.models.llama import LlamaConfig, LlamaLM  # noqa: E402
from jaxexit.models.mamba import MambaConfig, MambaLM  # noqa: E402

V, B, T, N = 32, 8, 6, 8
BATCH_AXES = ("data", "fsdp")


def llama() -> LlamaLM:
  cfg = LlamaConfig(
    vocab_size=V,
    d_model=16,
    num_layers=6,
    num_heads=4,
    num_kv_heads=2,
    mlp_hidden=32,
    max_position=64,
  )
  return peaked(LlamaLM(cfg, rngs=nnx.Rngs(0)))


def mamba() -> MambaLM:
  cfg = MambaConfig(vocab_size=V, d_model=16, num_layers=6, d_state=4)
  return peaked(MambaLM(cfg, rngs=nnx.Rngs(0)))


def peaked(model):
  """The (tied) embedding scaled 30x: confident enough softmaxes that a
  threshold mixes early exits with full-depth tokens."""
  state = jax.tree_util.tree_map_with_path(
    lambda path, x: x * 30 if "embed" in jax.tree_util.keystr(path) else x,
    nnx.state(model),
  )
  nnx.update(model, state)
  return model


FAMILIES = {"llama": llama, "mamba": mamba}


def inputs():
  rng = np.random.default_rng(0)
  prompts = rng.integers(0, V, (B, T)).astype(np.int32)
  lengths = rng.integers(1, T + 1, (B,)).astype(np.int32)
  return prompts, lengths


def test_without_a_mesh_caches_are_left_alone():
  caches = llama().init_cache(2, 4)
  assert shard_caches(caches) is caches


def test_a_cache_leaf_without_a_row_is_named():
  with jax.set_mesh(sharding.make_mesh()):
    with pytest.raises(ValueError, match="'0/counter'"):
      jax.jit(lambda: shard_caches(({"counter": jnp.zeros((2, 3))},)))()


def test_host_values_passes_local_arrays():
  prompts, _ = inputs()
  assert host_values(prompts) is prompts
  local = jnp.asarray(prompts)
  assert host_values(local) is local


@slow
def test_eight_devices_match_one_device():
  run_children(__file__, [child_env(8)], timeout=900)


def pick_threshold(model, prompts, lengths, cfg) -> float:
  """The threshold of a grid that mixes exit depths the most (decode
  steps only; the batch exits together, so a mix is across steps)."""

  def spread(threshold):
    out = generate(model, LMHeadExits(), prompts, lengths, threshold, cfg)
    counts = np.bincount(np.asarray(out.exit_layer)[:, 1:].ravel())
    return np.count_nonzero(counts), -counts.max()

  return max(np.linspace(0.15, 0.95, 17).tolist(), key=spread)


def _assert_outputs_equal(got, want, what):
  for name in type(want).__dataclass_fields__:
    a, b = np.asarray(getattr(got, name)), np.asarray(getattr(want, name))
    if np.issubdtype(b.dtype, np.floating):
      np.testing.assert_allclose(a, b, atol=1e-5, err_msg=f"{what} {name}")
    else:
      np.testing.assert_array_equal(a, b, err_msg=f"{what} {name}")


def _child_generate(mesh, family, prompts, lengths, sharded_inputs):
  reference, model = FAMILIES[family](), FAMILIES[family]()
  nnx.update(model, sharding.shard_state(nnx.state(model), mesh, family=family))
  specs = {x.sharding.spec for x in jax.tree.leaves(nnx.state(model))}
  assert any("tensor" in s for s in specs) and any("fsdp" in s for s in specs)
  modes = STATE_MODES if family == "llama" else ("propagate", "freeze")
  for mode in modes:
    cfg = DecodeConfig(
      exit_layers=(2, 4), state_mode=mode, max_new_tokens=N, pending=3
    )
    threshold = pick_threshold(reference, prompts, lengths, cfg)
    want = generate(reference, LMHeadExits(), prompts, lengths, threshold, cfg)
    with jax.set_mesh(mesh):
      got = generate(model, LMHeadExits(), *sharded_inputs, threshold, cfg)
    assert got.tokens.sharding.spec == P(BATCH_AXES), got.tokens.sharding
    _assert_outputs_equal(got, want, f"{family} {mode}")
    exits = np.bincount(np.asarray(want.exit_layer)[:, 1:].ravel())
    print(f"{family} {mode} threshold {threshold:.2f}: exits {exits}")
    assert np.count_nonzero(exits) > 1, exits
  want = generate_full(reference, prompts, lengths, max_new_tokens=N)
  with jax.set_mesh(mesh):
    got = generate_full(model, *sharded_inputs, max_new_tokens=N)
  np.testing.assert_array_equal(got, want, err_msg=f"{family} full")
  return reference, model


def _child_cache_bytes(mesh, model, sharded_inputs):
  """The engine's caches are split: its program's per-device temporaries
  hold less than one replicated copy of the caches."""
  max_len = 2000
  cfg = DecodeConfig(exit_layers=(2, 4), max_new_tokens=N)
  caches = jax.eval_shape(lambda: model.init_cache(B, max_len))
  cache_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(caches))
  graphdefs, params = zip(*(nnx.split(m) for m in (model, LMHeadExits())))
  with jax.set_mesh(mesh):
    compiled = engine._generate.lower(
      graphdefs,
      params,
      *sharded_inputs,
      jnp.float32(0.5),
      jax.random.key(0),
      config=cfg,
      max_len=max_len,
    ).compile()
    placed = jax.jit(lambda: shard_caches(model.init_cache(B, max_len)))()
  k = placed[0].k
  assert k.sharding.shard_shape(k.shape) == (2, max_len, 1, 4), k.sharding
  temp = compiled.memory_analysis().temp_size_in_bytes
  print(f"caches {cache_bytes} B in all; {temp} B temporaries per device")
  assert temp < cache_bytes / 2, (temp, cache_bytes)


def _child_main():
  assert jax.device_count() == 8, jax.devices()
  mesh = sharding.make_mesh("data=2,fsdp=2,tensor=2")
  prompts, lengths = inputs()
  sharded_inputs = sharding.shard_batch((prompts, lengths), mesh, BATCH_AXES)
  _child_generate(mesh, "mamba", prompts, lengths, sharded_inputs)
  reference, model = _child_generate(
    mesh, "llama", prompts, lengths, sharded_inputs
  )
  kwargs = dict(exit_layer=2, draft_len=3, max_new_tokens=N)
  want = generate_self_speculative(reference, prompts, lengths, **kwargs)
  with jax.set_mesh(mesh):
    got = generate_self_speculative(model, *sharded_inputs, **kwargs)
  _assert_outputs_equal(got, want, "self-speculative")
  assert got.acceptance_rate == want.acceptance_rate
  _child_cache_bytes(mesh, model, sharded_inputs)


if __name__ == "__main__" and "--child" in sys.argv:
  jax.config.update("jax_numpy_rank_promotion", "raise")
  _child_main()
  print("CHILD OK")
