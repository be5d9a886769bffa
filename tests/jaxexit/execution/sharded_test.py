"""The execution modes on a sharded batch (`jaxexit.execution.sharded`).

On one device the sharded runners must equal the plain ones and refuse
bad meshes; the 8-device child (`python sharded_test.py --child`, 8
simulated CPU devices) checks that early_stop, compacted and simulate on
a batch split over (data 2, fsdp 2, tensor 2) and over (data 8) give the
unsharded exits and outputs, that each device stops at its own deepest
example, that compacted buckets are per device, and that parameters
sharded with fsdp and tensor axes run too.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from tests.jaxexit.execution import toy_stack
from tests.jaxexit.execution.modes_test import RULES
from tests.jaxexit.sharding.device_children import child_env, run_children
from tests.tiers import fast_only, slow

if __name__ == "__main__":  # The child checks shapes like conftest.
  from jaxtyping import install_import_hook

  install_import_hook(["jaxexit"], "beartype.beartype")

from jaxexit import execution, sharding  # noqa: E402
from jaxexit.execution import bucket_sizes  # noqa: E402
from jaxexit import exits as rules_lib  # noqa: E402
from jaxexit.exits import rules  # noqa: E402
from jaxexit.nn.encoder import EncoderConfig, ExitEncoder  # noqa: E402

L = 6
SHARDED_MODES = ("early_stop", "compacted", "simulate")


def _inputs(rule_name, batch, seed=0):
  stack, params = toy_stack.make(L, jax.random.key(seed))
  carry = toy_stack.inputs(batch, jax.random.key(seed + 1))
  make_rule, needs = RULES[rule_name]
  rule_inputs = None
  if needs == "depths":
    rule_inputs = jax.random.randint(
      jax.random.key(seed + 2), (batch,), 1, L + 1
    )
  return stack, params, carry, make_rule(), rule_inputs


def _assert_same(result, ref, what):
  np.testing.assert_array_equal(
    np.asarray(result.exit_layer), np.asarray(ref.exit_layer), err_msg=what
  )
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(
      np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6, err_msg=what
    ),
    result.outputs,
    ref.outputs,
  )


@pytest.mark.parametrize(
  "mode",
  fast_only(SHARDED_MODES, "early_stop", "simulate", slow_too=("compacted",)),
)
def test_one_device_mesh_equals_plain_runner(mode):
  stack, params, carry, rule, depths = _inputs("preset", 5)
  mesh = sharding.make_mesh()
  ref = execution.make_runner(mode, stack, rule)(
    params, carry, rule_inputs=depths
  )
  runner = execution.make_sharded_runner(mode, stack, rule, mesh)
  result = runner(params, carry, rule_inputs=depths)
  _assert_same(result, ref, mode)
  if mode == "early_stop":  # one shard: the batch's deepest example
    assert result.device_layers.tolist() == [int(np.max(depths))]
  assert execution.make_sharded_runner(mode, stack, rule, mesh) is runner


def test_bad_mode_and_axes_are_named():
  stack, _, _, rule, _ = _inputs("never", 4)
  mesh = sharding.make_mesh()
  with pytest.raises(ValueError, match="mode"):
    execution.make_sharded_runner("eager", stack, rule, mesh)
  with pytest.raises(ValueError, match=r"mesh axis \['model'\]"):
    execution.make_sharded_runner("early_stop", stack, rule, mesh, axes="model")


@slow
def test_eight_devices_match_one_device():
  run_children(__file__, [child_env(8)], timeout=900)


def _child_equal_to_unsharded(mesh, axes, n):
  """Every mode and rule: sharded == unsharded, on 2 * n examples."""
  for rule_name in ("preset", "patience_like", "halt>0.7", "always"):
    stack, params, carry, rule, inputs = _inputs(rule_name, 2 * n)
    for mode in SHARDED_MODES:
      ref = execution.make_runner(mode, stack, rule)(
        params, carry, rule_inputs=inputs
      )
      result = execution.make_sharded_runner(mode, stack, rule, mesh)(
        params, sharding.shard_batch(carry, mesh, axes), rule_inputs=inputs
      )
      _assert_same(result, ref, f"{mode} {rule_name} {dict(mesh.shape)}")
      assert result.exit_layer.sharding.spec == P(axes), mode
  # A rule keyed on the batch: one PRNG key split into B keys.
  stack, params, carry, _, _ = _inputs("never", 2 * n)
  rule, key = rules_lib.sampled_exit_rule(), jax.random.key(7)
  for mode in ("early_stop", "compacted"):
    ref = execution.make_runner(mode, stack, rule)(
      params, carry, rule_inputs=key
    )
    result = execution.make_sharded_runner(mode, stack, rule, mesh)(
      params, sharding.shard_batch(carry, mesh, axes), rule_inputs=key
    )
    _assert_same(result, ref, f"{mode} sampled {dict(mesh.shape)}")


def _child_per_device_depth():
  """8 shards of 2 examples: each stops at its own deepest example."""
  mesh = sharding.make_mesh("data=8")
  stack, params = toy_stack.make(L, jax.random.key(0))
  carry = toy_stack.inputs(16, jax.random.key(1))
  depths = jnp.array([1, 1, 2, 1, 3, 3, 1, 2, 6, 1, 1, 1, 4, 2, 5, 5])
  rule = rules.preset_depth()
  result = execution.make_sharded_runner("early_stop", stack, rule, mesh)(
    params, sharding.shard_batch(carry, mesh), rule_inputs=depths
  )
  assert result.device_layers.tolist() == [1, 2, 3, 2, 6, 1, 4, 5], result
  np.testing.assert_array_equal(result.exit_layer, depths - 1)
  print(f"early_stop layers per device: {result.device_layers.tolist()}")


def _child_per_device_buckets():
  """Compacted global batches are n x a per-device bucket, sized by the
  device with the most survivors."""
  mesh = sharding.make_mesh("data=4,tensor=2")
  n, b = 4, 8
  stack, params = toy_stack.make(L, jax.random.key(0))
  carry = toy_stack.inputs(n * b, jax.random.key(1))
  # Device 0 keeps 3 examples past layer 1, the others 1: buckets of 3.
  depths = np.ones((n, b), np.int32)
  depths[0, :3] = L
  depths[1:, 0] = 3
  runner = execution.make_sharded_runner(
    "compacted", stack, rules.preset_depth(), mesh
  )
  sizes, segment = [], runner._segment

  def recording(params, carry, *args, **kwargs):
    sizes.append(carry["h"].shape[0])
    return segment(params, carry, *args, **kwargs)

  runner._segment = recording
  try:
    result = runner(
      params, sharding.shard_batch(carry, mesh), rule_inputs=depths.ravel()
    )
  finally:
    runner._segment = segment
  np.testing.assert_array_equal(result.exit_layer, depths.ravel() - 1)
  assert sizes == [n * b] + [n * 3] * (L - 1), sizes
  assert 3 in bucket_sizes(b)
  print(f"compacted global batch per segment: {sizes}")


def _child_sharded_params():
  """An encoder whose parameters are fsdp- and tensor-sharded."""
  mesh = sharding.make_mesh("data=2,fsdp=2,tensor=2")
  cfg = EncoderConfig(
    num_layers=4, d_model=16, num_heads=2, d_ff=32, vocab_size=32, max_len=8
  )
  stack, params = ExitEncoder(cfg, rngs=nnx.Rngs(0)).exit_stack()
  tokens = jax.random.randint(jax.random.key(3), (8, 8), 1, cfg.vocab_size)
  model = ExitEncoder(cfg, rngs=nnx.Rngs(0))
  carry = model.embed_tokens(tokens)
  rule = rules.memoryless(
    lambda out, layer: jax.nn.softmax(out.logits).max(-1) > 0.9
  )
  placed = sharding.shard_state(params, mesh, family="exit_encoder")
  specs = {x.sharding.spec for x in jax.tree.leaves(placed)}
  assert P(None, "fsdp", None, "tensor", None) in specs, specs  # qkv
  sharded_carry = sharding.shard_batch(carry, mesh, ("data", "fsdp"))
  for mode in ("early_stop", "compacted"):
    ref = execution.make_runner(mode, stack, rule)(params, carry)
    result = execution.make_sharded_runner(mode, stack, rule, mesh)(
      placed, sharded_carry
    )
    _assert_same(result, ref, f"{mode} sharded encoder")
  exits = np.asarray(ref.exit_layer).tolist()
  print(f"encoder exits: {exits}")
  assert len(set(exits)) > 2, exits


def _child_main():
  assert jax.device_count() == 8, jax.devices()
  for spec, axes, n in (
    ("data=2,fsdp=2,tensor=2", ("data", "fsdp"), 4),
    ("data=8", "data", 8),
  ):
    _child_equal_to_unsharded(sharding.make_mesh(spec), axes, n)
  _child_per_device_depth()
  _child_per_device_buckets()
  _child_sharded_params()
  stack, params, carry, rule, _ = _inputs("never", 6)
  mesh = sharding.make_mesh("data=4,tensor=2")
  try:
    execution.make_sharded_runner("early_stop", stack, rule, mesh)(
      params, carry
    )
  except ValueError as e:
    assert "batch size 6 is not divisible by the 4 devices" in str(e), e
  else:
    raise AssertionError("a batch of 6 on 4 shards did not raise")


if __name__ == "__main__" and "--child" in sys.argv:
  jax.config.update("jax_numpy_rank_promotion", "raise")
  _child_main()
  print("CHILD OK")
