"""Tests for the generic rules in jaxexit.exits.rules."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxexit import exits
from jaxexit.exits import rules
from jaxexit.exits.outputs import ExitHeadOutput
from tests.jaxexit.exits.rule_driver import drive, layer_output

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


def _logits(seed=0):
  return jnp.asarray(
    np.random.default_rng(seed).normal(size=(B, L, 6)) * 2, jnp.float32
  )


def _full_output(seed=0) -> ExitHeadOutput:
  rng = np.random.default_rng(seed)
  h_in = rng.normal(size=(B, L, 8))
  return ExitHeadOutput(
    logits=_logits(seed),
    halt=jnp.asarray(rng.uniform(0.05, 0.95, (B, L)), jnp.float32),
    score=jnp.asarray(rng.uniform(0.05, 0.95, (B, L)), jnp.float32),
    extra={
      "h_in": jnp.asarray(h_in, jnp.float32),
      "h_out": jnp.asarray(h_in + rng.normal(size=(B, L, 8)), jnp.float32),
    },
  )


# Every rule factory of jaxexit.exits with an argument that makes it exit
# somewhere (the rule_inputs a few of them need ride along).
RULE_FACTORIES = {
  "max_softmax": lambda: exits.max_softmax_rule(0.5),
  "margin": lambda: exits.margin_rule(0.3),
  "entropy": lambda: exits.entropy_rule(1.0),
  "patience": lambda: exits.patience_rule(1),
  "cosine": lambda: exits.cosine_rule(0.7),
  "score": lambda: exits.score_rule(0.6),
  "learned_bertxit": lambda: exits.learned_exit_rule(0.4),
  "jei_gate": lambda: exits.jei_gate_rule(0.5),
  "q_exit": lambda: exits.q_exit_rule(0.5),
  "never": rules.never,
  "fixed_depth": lambda: rules.fixed_depth(2),
}


@pytest.mark.parametrize("name", RULE_FACTORIES)
def test_rule_reads_only_what_it_declares(name):
  """A rule given only the fields in `reads` decides as with all of them
  (early-exit decoding computes the others never)."""
  rule = RULE_FACTORIES[name]()
  assert set(rule.reads) <= set(rules.FIELDS)
  full = _full_output()
  only = ExitHeadOutput(
    **{f: getattr(full, f) if f in rule.reads else None for f in rules.FIELDS}
  )
  if not rule.reads:  # the batch size must come from somewhere
    only = ExitHeadOutput(extra=full.extra)
  np.testing.assert_array_equal(drive(rule, only), drive(rule, full))


@pytest.mark.parametrize(
  "make, measure",
  [
    (exits.max_softmax_rule, lambda o: exits.max_softmax(o.logits)),
    (exits.margin_rule, lambda o: exits.margin(o.logits)),
    (exits.cosine_rule, exits.hidden_cosine),
    (exits.score_rule, lambda o: o.score),
  ],
)
def test_threshold_rules_exit_where_their_measure_reaches_it(make, measure):
  full = _full_output(1)
  per_layer = np.stack(
    [np.asarray(measure(layer_output(full, i))) for i in range(L)], axis=1
  )
  threshold = float(np.median(per_layer))
  rule = make(threshold)
  first = np.where(
    (per_layer >= threshold).any(1), np.argmax(per_layer >= threshold, 1), L - 1
  )
  np.testing.assert_array_equal(drive(rule, full), first)
  np.testing.assert_allclose(
    rule.measure(layer_output(full, 2)), per_layer[:, 2], rtol=1e-6
  )
  assert len(set(first.tolist())) > 1, first  # the threshold mixes exits


def test_cosine_of_identical_states_is_one():
  h = jnp.asarray(np.random.default_rng(0).normal(size=(B, 8)), jnp.float32)
  out = ExitHeadOutput(extra={"h_in": h, "h_out": 3.0 * h})
  np.testing.assert_allclose(exits.hidden_cosine(out), 1.0, rtol=1e-6)


def test_threshold_rule_bad_inputs():
  with pytest.raises(ValueError, match="threshold"):
    exits.margin_rule(1.5)
  with pytest.raises(ValueError, match="threshold"):
    exits.cosine_rule(-2.0)
  with pytest.raises(ValueError, match="threshold"):
    exits.score_rule(-0.1)
  with pytest.raises(ValueError, match=r"extra\['h_in'\]"):
    exits.cosine_rule(0.5).update(None, ExitHeadOutput(extra=None), 0)
  with pytest.raises(ValueError, match="ExitRule.reads"):
    rules.memoryless(lambda out, layer: out.halt > 0, reads=("hidden",))
