"""The shard_map wrappers on 8 simulated CPU devices equal the plain kernels.

XLA_FLAGS must be set before jax is imported, so the check runs in a
subprocess (this process already imported jax with one CPU device). It
covers the GPU lowering in the Pallas interpreter (forward and gradients,
Auto and Explicit meshes) and, on jax >= 0.11, the TPU lowering in TPU
interpret mode (forward): with jax 0.10.2, TPU interpret mode under
`shard_map` over more than one simulated CPU device stalls (no CPU use for
minutes; one device works), with jax 0.12.1 it runs.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

# A subprocess with 8 CPU devices that compiles every kernel (~10 s).
pytestmark = pytest.mark.slow

_SCRIPT = textwrap.dedent("""
    import json
    import jax
    import jax.numpy as jnp
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P
    from kernels_pallas.position_attention import position_attention
    from kernels_pallas.selection_scores import selection_scores
    from kernels_pallas.sharded import (sharded_position_attention,
                                        sharded_selection_scores)
    from tests.kernels_pallas.position_attention_test import (
        attention_inputs, loss)
    from tests.kernels_pallas.selection_scores_test import score_inputs

    def err(a, b):
      return float(jnp.abs(jnp.asarray(a, jnp.float32)
                           - jnp.asarray(b, jnp.float32)).max())

    result = {"devices": jax.device_count()}
    for kind in ("Auto", "Explicit"):
      mesh = jax.make_mesh((4, 2), ("data", "tensor"),
                           axis_types=(getattr(AxisType, kind),) * 2)
      axes = dict(mesh=mesh, batch_axes="data", head_axis="tensor")
      args = attention_inputs(4, 20, 45, 4, 2, 16, jnp.float32)
      out = jax.jit(lambda *a: sharded_position_attention(*a, **axes))(*args)
      result[f"{kind}/attention"] = err(out, position_attention(*args))
      want = NamedSharding(mesh, P("data", None, "tensor", None))
      result[f"{kind}/attention_sharded"] = out.sharding.is_equivalent_to(
          want, 4)
      span = dict(span_start=5, span_len=20)
      sargs = score_inputs(4, 3, 37, 4, 2, 16, jnp.float32)
      out = jax.jit(lambda *a: sharded_selection_scores(*a, **span, **axes))(
          *sargs)
      result[f"{kind}/scores"] = err(out, selection_scores(*sargs, **span))
    q, k, v, *rest = args
    grads = [jax.jit(jax.grad(loss(fn, *rest), argnums=(0, 1, 2)))(q, k, v)
             for fn in (lambda *a: sharded_position_attention(*a, **axes),
                        position_attention)]
    result["grads"] = max(err(a, b) for a, b in zip(*grads))
    if tuple(int(p) for p in jax.__version__.split(".")[:2]) >= (0, 11):
      axes["backend"] = "tpu"
      out = jax.jit(lambda *a: sharded_position_attention(*a, **axes))(*args)
      result["tpu/attention"] = err(out, position_attention(*args))
      out = jax.jit(lambda *a: sharded_selection_scores(*a, **span, **axes))(
          *sargs)
      result["tpu/scores"] = err(out, selection_scores(*sargs, **span))
    try:
      sharded_position_attention(*attention_inputs(2, 4, 8, 4, 2, 16,
                                                   jnp.float32), **axes)
    except ValueError as e:
      result["indivisible"] = str(e)
    print(json.dumps(result))
""")


def test_sharded_kernels_equal_unsharded_on_8_devices():
  root = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  )
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    PYTHONPATH=root,
    XLA_FLAGS="--xla_force_host_platform_device_count=8",
  )
  proc = subprocess.run(
    [sys.executable, "-c", _SCRIPT],
    env=env,
    cwd=root,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["devices"] == 8
  for kind in ("Auto", "Explicit"):
    # Same kernel on each shard: bitwise equal up to XLA's fusion choices.
    np.testing.assert_allclose(result[f"{kind}/attention"], 0, atol=1e-6)
    assert result[f"{kind}/attention_sharded"]
    # The head mean is a pmean of per-device means: summation order only.
    np.testing.assert_allclose(result[f"{kind}/scores"], 0, atol=1e-7)
  np.testing.assert_allclose(result["grads"], 0, atol=1e-6)
  # TPU interpret mode: compared with the GPU lowering's unsharded result.
  for key in ("tpu/attention", "tpu/scores"):
    if key in result:
      np.testing.assert_allclose(result[key], 0, atol=1e-6, err_msg=key)
  assert (
    "q.shape[0]=2 is not divisible by the 4 devices" in (result["indivisible"])
  )
