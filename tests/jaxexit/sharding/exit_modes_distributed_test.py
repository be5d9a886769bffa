"""Exit modes over two processes x 4 devices equal one process x 8.

Two children joined on localhost (gloo collectives, as in
distributed_test) each load their block of the batch (`global_batch`) and
run `early_stop` and `compacted` on it (`make_sharded_runner`) and
early-exit `generate` with parameters placed by `shard_state`, on mesh
(data 2, fsdp 2, tensor 2); the same run in one process with 8 devices
must give the same exits, outputs, per-device depths and tokens, and
there equal the unsharded one-device modes. A prompt id outside the
vocabulary in the last process's rows makes both processes raise the
same error (the host checks gather the global prompts).
"""

import sys

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from tests.jaxexit.decoding.sharded_test import inputs, llama
from tests.jaxexit.sharding.distributed_test import (
  ENV_NAMES,
  _child_env,
  _free_port,
)
from tests.jaxexit.sharding.device_children import run_children
from tests.tiers import slow

from jaxexit import execution, sharding
from jaxexit.decoding import DecodeConfig, LMHeadExits, generate
from jaxexit.exits import rules

L, BATCH, THRESHOLD = 6, 16, 0.2
DEPTHS = np.array([1, 1, 2, 1, 3, 3, 1, 2, 6, 1, 1, 1, 4, 2, 5, 5], np.int32)


def _block(tree):
  """This process's contiguous rows of every leaf of `tree`."""
  count, index = jax.process_count(), jax.process_index()

  def rows(x):
    x = np.asarray(x)
    size = x.shape[0] // count
    return x[index * size : (index + 1) * size]

  return jax.tree.map(rows, tree)


def _gather(tree):
  return jax.tree.map(
    np.asarray, multihost_utils.process_allgather(tree, tiled=True)
  )


def _exit_modes(mesh) -> dict:
  # Imported once the cluster is joined: its default keys start JAX.
  from tests.jaxexit.execution import toy_stack

  stack, params = toy_stack.make(L, jax.random.key(0))
  carry = toy_stack.inputs(BATCH, jax.random.key(1))
  rule = rules.preset_depth()
  placed = sharding.replicate(params, mesh)
  local = sharding.global_batch(_block(carry), mesh)
  out = {}
  for mode in ("early_stop", "compacted"):
    result = execution.make_sharded_runner(mode, stack, rule, mesh)(
      placed, local, rule_inputs=DEPTHS
    )
    exits, outputs = _gather((result.exit_layer, result.outputs))
    out[f"{mode}/exit_layer"] = exits
    out[f"{mode}/logits"] = outputs.logits
    if mode == "early_stop":
      out["early_stop/device_layers"] = _gather(result.device_layers)
    if jax.process_count() == 1:  # the one-device reference
      ref = execution.make_runner(mode, stack, rule)(
        params, carry, rule_inputs=DEPTHS
      )
      np.testing.assert_array_equal(exits, ref.exit_layer)
      np.testing.assert_allclose(
        outputs.logits, ref.outputs.logits, rtol=1e-5, atol=1e-5
      )
  return out


def _decode(mesh) -> dict:
  prompts, lengths = inputs()
  model = llama()
  state = sharding.shard_state(nnx.state(model), mesh, family="llama")
  nnx.update(model, state)
  cfg = DecodeConfig(exit_layers=(2, 4), max_new_tokens=8)
  batch = sharding.global_batch(_block((prompts, lengths)), mesh)
  with jax.set_mesh(mesh):
    result = generate(model, LMHeadExits(), *batch, THRESHOLD, cfg)
    bad = prompts.copy()
    bad[-1, 0] = 32  # in the last process's rows
    try:
      generate(
        model,
        LMHeadExits(),
        sharding.global_batch(_block(bad), mesh),
        batch[1],
        THRESHOLD,
        cfg,
      )
    except ValueError as e:
      assert "must lie in [0, 32)" in str(e), e
    else:
      raise AssertionError("a prompt id of 32 did not raise")
  tokens, exits = _gather((result.tokens, result.exit_layer))
  if jax.process_count() == 1:
    ref = generate(llama(), LMHeadExits(), prompts, lengths, THRESHOLD, cfg)
    np.testing.assert_array_equal(tokens, ref.tokens)
    np.testing.assert_array_equal(exits, ref.exit_layer)
  return {"generate/tokens": tokens, "generate/exit_layer": exits}


def _child(out: str) -> None:
  sharding.init_distributed(timeout_s=120)
  assert jax.device_count() == 8, jax.devices()
  mesh = sharding.make_mesh("data=2,fsdp=2,tensor=2")
  results = {**_exit_modes(mesh), **_decode(mesh)}
  if sharding.is_main_process():
    np.savez(out, **results)
  print(
    f"process {jax.process_index()}: device layers "
    f"{results['early_stop/device_layers'].tolist()}, exits "
    f"{np.bincount(results['generate/exit_layer'][:, 1:].ravel())}"
  )


@slow
def test_two_processes_run_exit_modes_like_one_process(tmp_path):
  address = f"127.0.0.1:{_free_port()}"
  multi, single = (str(tmp_path / f"{n}.npz") for n in ("multi", "one"))
  run_children(
    __file__,
    [
      _child_env(4, **dict(zip(ENV_NAMES, (address, "2", str(i)))))
      for i in range(2)
    ],
    multi,
    timeout=600,
  )
  run_children(__file__, [_child_env(8)], single, timeout=600)
  with np.load(multi) as a, np.load(single) as b:
    assert sorted(a) == sorted(b), (sorted(a), sorted(b))
    for name in a:
      np.testing.assert_allclose(a[name], b[name], atol=1e-6, err_msg=name)
    assert b["early_stop/device_layers"].tolist() == [2, 3, 6, 5]
    assert len(set(b["generate/exit_layer"][:, 1:].ravel())) > 1


if __name__ == "__main__" and "--child" in sys.argv:
  jax.config.update("jax_numpy_rank_promotion", "raise")
  _child(sys.argv[sys.argv.index("--child") + 1])
  print("CHILD OK")
