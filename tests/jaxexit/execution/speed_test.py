import jax
import numpy as np
import pytest

from jaxexit import execution
from jaxexit.exits import rules
from tests.jaxexit.execution import toy_stack
from tests.tiers import slow


def test_full_model_equals_never_rule():
  stack, params = toy_stack.make(5)
  carry = toy_stack.inputs(6)
  full = execution.make_full_model(stack)(params, carry)
  ref = execution.simulate(stack, rules.never(), params, carry)
  np.testing.assert_allclose(
    full.logits, ref.outputs.logits, rtol=1e-6, atol=1e-6
  )


@slow
@pytest.mark.parametrize("mode", ["early_stop", "compacted"])
def test_measure_speedup_report(mode):
  stack, params = toy_stack.make(4)
  batches = [toy_stack.inputs(8, jax.random.key(i)) for i in range(2)]
  depths = [np.full((8,), 1, np.int32), np.full((8,), 2, np.int32)]
  rep = execution.measure_speedup(
    stack,
    rules.preset_depth(),
    params,
    batches,
    mode=mode,
    rule_inputs=depths,
    warmup=1,
    repeats=2,
  )
  assert rep.batch_size == 8 and rep.avg_layers == 1.5
  assert rep.theoretical_speedup == pytest.approx(4 / 1.5)
  assert rep.realised_speedup > 0 and rep.full_seconds > 0
  assert rep.ratio == pytest.approx(rep.realised_speedup / (4 / 1.5))


@slow
def test_measure_speedup_bad_input():
  stack, params = toy_stack.make(2)
  with pytest.raises(ValueError, match="at least one batch"):
    execution.measure_speedup(
      stack, rules.never(), params, [], mode="early_stop"
    )
  with pytest.raises(ValueError, match="rule_inputs has 1 entries"):
    execution.measure_speedup(
      stack,
      rules.never(),
      params,
      [toy_stack.inputs(2)] * 2,
      mode="early_stop",
      rule_inputs=[None],
    )
