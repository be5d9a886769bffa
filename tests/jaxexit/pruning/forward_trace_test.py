"""One traced block program per distinct buffer length, eager and in jit."""

import jax
from flax import nnx

from jaxexit.pruning import (block_trace_count, full_schedule,
                             hidrop_from_stages, pruned_forward,
                             reset_block_traces)
from tests.jaxexit.pruning.tiny import make_case, tiny_lm
from tests.tiers import slow

# Injection at 1, drops after 2 and 3, exit at 5: buffer lengths T (layers
# 0 and 5), T + 8, T + 4, T + 2.
SCHEDULE = hidrop_from_stages(6, 8, 1, 5, (2, 3), (4, 2))


@slow
def test_eager_traces_once_per_stage_shape():
  lm, case = tiny_lm(), make_case()
  reset_block_traces()
  pruned_forward(lm, case.inputs, SCHEDULE)
  assert block_trace_count() == len(set(SCHEDULE.keep)) == 4
  pruned_forward(lm, case.inputs, SCHEDULE)  # cached: no new trace
  assert block_trace_count() == 4
  reset_block_traces()
  pruned_forward(lm, case.inputs, full_schedule(6, 8))
  assert block_trace_count() == 1


@slow
def test_jit_traces_once_per_stage_shape():
  lm, case = tiny_lm(), make_case(suffix=6)
  graphdef, state = nnx.split(lm)
  fn = jax.jit(lambda s, x: pruned_forward(nnx.merge(graphdef, s), x,
                                           SCHEDULE).logits)
  reset_block_traces()
  fn.lower(state, case.inputs)  # traces the whole forward, no compile
  assert block_trace_count() == 4
