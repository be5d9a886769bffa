"""Tests for the generic rules in jaxexit.exits.rules."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxexit.exits import rules
from jaxexit.exits.outputs import ExitHeadOutput
from tests.jaxexit.exits.rule_driver import drive

B, L = 4, 5
OUT = ExitHeadOutput(logits=jnp.zeros((B, L, 3)))


@pytest.mark.parametrize("traced", [False, True])
def test_never_and_always(traced):
  assert drive(rules.never(), OUT, traced_layer=traced).tolist() == [L - 1] * B
  assert drive(rules.always(), OUT, traced_layer=traced).tolist() == [0] * B


@pytest.mark.parametrize("traced", [False, True])
@pytest.mark.parametrize("k", [1, 3, L, L + 2])
def test_fixed_depth(k, traced):
  got = drive(rules.fixed_depth(k), OUT, traced_layer=traced)
  assert got.tolist() == [min(k, L) - 1] * B


@pytest.mark.parametrize("traced", [False, True])
def test_preset_depth(traced):
  depths = jnp.array([1, 3, 5, 2], jnp.int32)
  got = drive(
    rules.preset_depth(), OUT, rule_inputs=depths, traced_layer=traced
  )
  np.testing.assert_array_equal(got, np.asarray(depths) - 1)


def test_memoryless():
  halt = jnp.array([[0.1, 0.9, 0.9, 0.1, 0.1]] * B)
  rule = rules.memoryless(lambda out, layer: out.halt > 0.5)
  assert drive(rule, ExitHeadOutput(halt=halt)).tolist() == [1] * B


def test_bad_inputs():
  with pytest.raises(ValueError, match="num_layers_used"):
    rules.fixed_depth(0)
  with pytest.raises(ValueError, match="rule_inputs"):
    rules.preset_depth().init(B, None)
  with pytest.raises(ValueError, match="rule_inputs"):
    rules.preset_depth().init(B, jnp.ones((B + 1,), jnp.int32))
  with pytest.raises(ValueError, match="batch size"):
    rules.never().update(None, ExitHeadOutput(), 0)
