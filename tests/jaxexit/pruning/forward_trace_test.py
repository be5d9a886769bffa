"""One traced block program per distinct buffer length, eager and in jit."""

import jax
import pytest
from flax import nnx

from jaxexit.pruning import (
  forward,
  full_schedule,
  hidrop_from_stages,
  pruned_forward,
)
from tests.jaxexit.pruning.tiny import make_case, tiny_lm
from tests.tiers import slow

# Injection at 1, drops after 2 and 3, exit at 5: buffer lengths T (layers
# 0 and 5), T + 8, T + 4, T + 2.
SCHEDULE = hidrop_from_stages(6, 8, 1, 5, (2, 3), (4, 2))


@pytest.fixture
def block_traces(monkeypatch):
  """A list that grows by one each time the shared block is traced (the
  jitted block's Python body runs once per trace), from an empty cache."""
  traces = []
  inner = forward.block_forward

  def counting(*args, **kwargs):
    traces.append(1)
    return inner(*args, **kwargs)

  monkeypatch.setattr(forward, "block_forward", counting)
  forward._block_forward.clear_cache()
  yield traces
  forward._block_forward.clear_cache()


@slow
def test_eager_traces_once_per_stage_shape(block_traces):
  lm, case = tiny_lm(), make_case()
  pruned_forward(lm, case.inputs, SCHEDULE)
  assert len(block_traces) == len(set(SCHEDULE.keep)) == 4
  pruned_forward(lm, case.inputs, SCHEDULE)  # cached: no new trace
  assert len(block_traces) == 4
  forward._block_forward.clear_cache()
  block_traces.clear()
  pruned_forward(lm, case.inputs, full_schedule(6, 8))
  assert len(block_traces) == 1


@slow
def test_jit_traces_once_per_stage_shape(block_traces):
  lm, case = tiny_lm(), make_case(suffix=6)
  graphdef, state = nnx.split(lm)
  fn = jax.jit(
    lambda s, x: pruned_forward(nnx.merge(graphdef, s), x, SCHEDULE).logits
  )
  fn.lower(state, case.inputs)  # traces the whole forward, no compile
  assert len(block_traces) == 4
