"""LYNX's conformal exit rule: exact quantiles, refusals, the guarantee."""

import math

import numpy as np
import pytest

from jaxexit.methods import lynx_conformal as lc

DELTAS = (0.01, 0.02, 0.05, 0.1, 0.2)


def test_quantiles_follow_the_formula():
  # Label-0 p̂ = 0.1..0.9 (n0 = 9): k0 = ceil(10 · 0.8) = 8 -> q0 = 0.8.
  p0 = np.round(np.arange(1, 10) / 10, 2)
  p1 = np.array([0.95, 0.9, 0.7, 0.6])  # s1 = 0.05, 0.1, 0.3, 0.4
  p = np.concatenate([p0, p1])
  y = np.array([0] * 9 + [1] * 4)
  rule = lc.calibrate(p, y, 0.2)
  assert rule.q0 == pytest.approx(0.8)
  # n1 = 4: k1 = ceil(5 · 0.8) = 4 -> the largest s1, 0.4.
  assert rule.q1 == pytest.approx(0.4)
  assert (rule.n0, rule.n1) == (9, 4)
  got = np.asarray(lc.exits(rule, np.array([0.5, 0.8, 0.81, 0.99])))
  assert got.tolist() == [False, False, True, True]


def test_too_few_wrong_events_refuse_to_exit_and_say_so():
  p = np.array([0.2, 0.3, 0.9, 0.95])
  y = np.array([0, 0, 1, 1])
  with pytest.warns(UserWarning, match="never exits"):
    rule = lc.calibrate(p, y, 0.1)  # k0 = ceil(3 · 0.9) = 3 > n0 = 2
  assert math.isinf(rule.q0)
  assert not np.asarray(lc.exits(rule, np.array([1.0]))).any()


def test_bad_inputs():
  p, y = np.array([0.2, 0.9]), np.array([0, 1])
  for delta in (0.0, 1.0, -0.1, 1.5):
    with pytest.raises(ValueError, match="delta"):
      lc.calibrate(p, y, delta)
  with pytest.raises(ValueError, match="class 0"):
    lc.calibrate(np.array([0.5, 0.6]), np.array([1, 1]), 0.1)
  with pytest.raises(ValueError, match="class 1"):
    lc.calibrate(np.array([0.5, 0.6]), np.array([0, 0]), 0.1)
  with pytest.raises(ValueError, match="labels must be 0 or 1"):
    lc.calibrate(p, np.array([0, 2]), 0.1)
  with pytest.raises(ValueError, match="p_hat"):
    lc.calibrate(np.array([0.2, 1.2]), y, 0.1)


def _noisy_events(n=4000, noise=0.25, seed=0):
  """A probe that knows the label up to `noise` (continuous p̂, no ties)."""
  rng = np.random.default_rng(seed)
  y = (rng.uniform(size=n) < 0.5).astype(np.int32)
  flipped = np.where(rng.uniform(size=n) < noise, 1 - y, y)
  logit = 2.0 * (2 * flipped - 1) + rng.normal(0, 1.0, n)
  return 1.0 / (1.0 + np.exp(-logit)), y


@pytest.mark.parametrize("delta", DELTAS)
def test_premature_exit_rate_stays_below_delta_over_100_splits(delta):
  p, y = _noisy_events()
  rates = lc.premature_exit_rates(p, y, delta, splits=100)
  assert not np.isnan(rates).any()
  # The guarantee is on the mean over calibration draws; 100 splits of
  # ~1000 label-0 test events leave a standard error of ~sqrt(δ/1000/100).
  se = math.sqrt(delta * (1 - delta) / 1000 / 100)
  assert rates.mean() <= delta + 3 * se, (rates.mean(), delta)
  # Not vacuous: the rule does exit on label-0 events at a rate near δ.
  assert rates.mean() >= 0.3 * delta, rates.mean()


def test_a_broken_rule_would_fail_the_check():
  """A rule whose q0 sits at a lower quantile than δ asks for (here the 4δ
  rule used at δ) breaks the bound, and the same check catches it."""
  p, y = _noisy_events(seed=1)
  delta = 0.05
  loose = lc.premature_exit_rates(p, y, 4 * delta, splits=20)
  assert loose.mean() > 2 * delta
