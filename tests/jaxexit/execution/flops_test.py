import numpy as np
import pytest

from jaxexit.execution import exit_flops, xla_flops
from tests.jaxexit.execution import toy_stack
from tests.tiers import slow


def test_xla_flops_counts_a_matmul():
  a, b = np.ones((4, 8), np.float32), np.ones((8, 16), np.float32)
  assert xla_flops(lambda x, y: x @ y, a, b) == 2 * 4 * 8 * 16


@slow
def test_exit_flops_per_example_and_cumulative():
  stack, params = toy_stack.make(3)
  one = exit_flops(stack, params, toy_stack.inputs(1))
  four = exit_flops(stack, params, toy_stack.inputs(4))
  np.testing.assert_allclose(one.layer, four.layer)
  d = toy_stack.D
  assert one.layer[0] >= 2 * d * d  # the layer's matmul at least
  np.testing.assert_allclose(one.cumulative, np.cumsum(one.layer + one.head))
  assert one.full == pytest.approx(one.layer.sum() + one.head[-1])
  assert one.fraction[-1] > 1.0  # heads on the way cost extra


def test_xla_flops_is_zero_without_float_work():
  assert xla_flops(lambda x: x, np.ones((3,), np.int32)) == 0.0
