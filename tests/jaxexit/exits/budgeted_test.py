"""Tests for jaxexit.exits.budgeted (MSDNet budgeted thresholds)."""

import jax
import numpy as np
import pytest

from jaxexit import execution
from jaxexit.exits import budgeted, confidence, rules
from tests.jaxexit.execution import toy_stack
from tests.jaxexit.exits.rule_driver import drive, unchecked
from tests.tiers import slow


def _rescale_reference(r, rescale):
  """The literal step-by-step procedure of Dynamic Perceiver (§7)."""
  k = len(rescale)
  q = r ** np.arange(1, k + 1, dtype=np.float64)
  q /= q.sum()
  for j in range(k - 1):
    q[j] *= rescale[j]
    q[j + 1 :] = (1 - q[: j + 1].sum()) * q[j + 1 :] / q[j + 1 :].sum()
  return q


def test_dyn_perceiver_constants():
  r = budgeted.DYN_PERCEIVER_R_VALUES
  # The official 33 ratios hold r = 1 twice; it is kept once.
  assert len(r) == 32 == len(set(r))
  assert r[0] == 0.2 and r[16] == 1.0 and r[-1] == 4.0
  assert list(r) == sorted(r)
  assert budgeted.DYN_PERCEIVER_RESCALE == (0.85, 1.0, 0.5, 1.0)


@pytest.mark.parametrize("r", [0.2, 0.5, 1.0, 2.0, 4.0])
def test_geometric_distribution(r):
  q = budgeted.geometric_exit_distribution(r, 5)
  want = r ** np.arange(5.0)
  np.testing.assert_allclose(q, want / want.sum(), rtol=1e-12)
  assert budgeted.geometric_exit_distribution(r, 1).tolist() == [1.0]


def test_rescale_matches_the_step_by_step_procedure():
  for r in budgeted.DYN_PERCEIVER_R_VALUES:
    q = budgeted.geometric_exit_distribution(
      r, 4, rescale=budgeted.DYN_PERCEIVER_RESCALE
    )
    np.testing.assert_allclose(
      q, _rescale_reference(r, budgeted.DYN_PERCEIVER_RESCALE), atol=1e-12
    )
    assert abs(q.sum() - 1) < 1e-12
  # r = 1: q0 = 0.25·0.85, then the tail takes the rest equally, and so on.
  q = budgeted.geometric_exit_distribution(
    1.0, 4, rescale=budgeted.DYN_PERCEIVER_RESCALE
  )
  np.testing.assert_allclose(q, [0.2125, 0.2625, 0.13125, 0.39375])


@pytest.mark.parametrize(
  "bad",
  [
    dict(r=0.0),
    dict(r=-1.0),
    dict(r=float("nan")),
    dict(num_exits=0),
    dict(rescale=(0.5, 1.0)),
    dict(rescale=(1.5, 1.0, 1.0)),
    dict(rescale=(0.5, 1.0, 0.5)),
  ],
)
def test_geometric_distribution_rejects(bad):
  kwargs = dict(r=0.5, num_exits=3) | bad
  r = kwargs.pop("r")
  with pytest.raises(ValueError, match=next(iter(bad))):
    budgeted.geometric_exit_distribution(r, **kwargs)


def test_fit_thresholds_hand_example():
  # 10 examples, 3 exits, q = (0.3, 0.3, 0.4): 3 exit at 0, 3 at 1.
  conf = np.array(
    [
      [0.95, 0.2, 0],
      [0.9, 0.3, 0],
      [0.85, 0.4, 0],
      [0.8, 0.99, 0],
      [0.5, 0.9, 0],
      [0.4, 0.8, 0],
      [0.3, 0.7, 0],
      [0.2, 0.6, 0],
      [0.1, 0.5, 0],
      [0.05, 0.1, 0],
    ]
  )
  t = budgeted.fit_thresholds(conf, [0.3, 0.3, 0.4])
  # Exit 1 ranks the 7 survivors only: 0.99, 0.9, 0.8 (0.3 and 0.4 left).
  np.testing.assert_array_equal(t, [0.85, 0.8, -np.inf])
  e = budgeted.budgeted_exit(conf, t)
  np.testing.assert_array_equal(e, [0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
  assert e.dtype == np.int32


@pytest.mark.parametrize("r", budgeted.DYN_PERCEIVER_R_VALUES[::4])
def test_fit_thresholds_hits_floor_n_q(r):
  conf = np.asarray(jax.random.uniform(jax.random.key(0), (203, 4)))
  q = budgeted.geometric_exit_distribution(r, 4)
  counts = np.bincount(
    budgeted.budgeted_exit(conf, budgeted.fit_thresholds(conf, q)), minlength=4
  )
  np.testing.assert_array_equal(counts[:3], np.floor(203 * q[:3]))
  assert counts.sum() == 203


def test_fit_thresholds_ties_zero_target_and_exhaustion():
  conf = np.full((10, 3), 0.5)
  # Ties at T all exit: target 2, but all 10 examples have confidence 0.5.
  t = budgeted.fit_thresholds(conf, [0.2, 0.3, 0.5])
  assert t[0] == 0.5
  # Nobody remains for exit 1, whose target (3) is never reached: +inf.
  assert t[1] == np.inf
  # floor(10·0.05) = 0: nobody exits at 0.
  t = budgeted.fit_thresholds(
    np.random.default_rng(0).random((10, 3)), [0.05, 0.45, 0.5]
  )
  assert t[0] == np.inf and np.isfinite(t[1]) and t[2] == -np.inf


def test_fit_and_exit_reject_bad_input():
  conf = np.random.default_rng(0).random((8, 3))
  with pytest.raises(ValueError, match="q must sum to 1"):
    budgeted.fit_thresholds(conf, [0.2, 0.2, 0.2])
  with pytest.raises(ValueError, match="one entry per exit"):
    unchecked(budgeted.fit_thresholds)(conf, [0.5, 0.5])
  with pytest.raises(ValueError, match=r"\[B, L\]"):
    unchecked(budgeted.fit_thresholds)(conf[0], [0.5, 0.5, 0.0])
  with pytest.raises(ValueError, match="confidence must be finite"):
    budgeted.budgeted_exit(np.full((2, 3), np.nan), [0.5, 0.5, -np.inf])
  with pytest.raises(ValueError, match="thresholds"):
    unchecked(budgeted.budgeted_exit)(conf, [0.5, -np.inf])


COSTS = (0.25, 0.5, 0.75, 1.05)


@pytest.mark.parametrize("rescale", [None, budgeted.DYN_PERCEIVER_RESCALE])
@pytest.mark.parametrize("budget", [0.3, 0.5, 0.8, 1.0])
def test_distribution_for_budget_meets_budget(budget, rescale):
  q = budgeted.distribution_for_budget(budget, COSTS, rescale=rescale)
  assert abs(q.sum() - 1) < 1e-12 and (q >= 0).all()
  np.testing.assert_allclose(q @ np.array(COSTS), budget, atol=1e-9)


def test_distribution_for_budget_edges():
  np.testing.assert_array_equal(
    budgeted.distribution_for_budget(1.0, (0.2, 0.6, 1.0)), [0, 0, 1]
  )
  q = budgeted.distribution_for_budget(0.25, COSTS)
  np.testing.assert_allclose(q, [1, 0, 0, 0], atol=1e-12)
  with pytest.raises(ValueError, match=r"budget=0.1 .*exit_costs\[0\]=0.25"):
    budgeted.distribution_for_budget(0.1, COSTS)
  # With the rescale at least 15 % leave after exit 0, so 0.26 is too cheap.
  with pytest.raises(ValueError, match="cheapest reachable"):
    budgeted.distribution_for_budget(
      0.26, COSTS, rescale=budgeted.DYN_PERCEIVER_RESCALE
    )
  for bad in (0.0, -0.5, 1.5):
    with pytest.raises(ValueError, match="budget"):
      budgeted.distribution_for_budget(bad, COSTS)
  with pytest.raises(ValueError, match="exit_costs"):
    budgeted.distribution_for_budget(0.5, (0.5, 0.4, 1.0))


@slow
def test_thresholds_rule_matches_budgeted_exit_through_simulate():
  num_layers, batch = 5, 64
  stack, params = toy_stack.make(num_layers)
  carry = toy_stack.inputs(batch)
  full = execution.simulate(stack, rules.never(), params, carry)
  conf = np.asarray(confidence.max_softmax(full.per_layer.logits))  # [B, L]
  for r in (0.3, 3.0):
    t = budgeted.fit_thresholds(
      conf, budgeted.geometric_exit_distribution(r, num_layers)
    )
    want = budgeted.budgeted_exit(conf, t)
    rule = budgeted.thresholds_rule(t)
    got = execution.simulate(stack, rule, params, carry).exit_layer
    np.testing.assert_array_equal(np.asarray(got), want)
    np.testing.assert_array_equal(
      drive(rule, full.per_layer, traced_layer=True), want
    )
    assert len(set(want.tolist())) > 1


def test_thresholds_rule_rejects():
  with pytest.raises(ValueError, match="thresholds"):
    budgeted.thresholds_rule([0.5, np.nan])
  with pytest.raises(ValueError, match="thresholds"):
    budgeted.thresholds_rule([])
