"""Tests for jaxexit.conformal (split conformal, per exit)."""

import numpy as np
import pytest

from jaxexit import conformal
from tests.jaxexit.exits.rule_driver import unchecked


def test_conformal_quantile_hand_examples():
  scores = np.arange(1, 20) / 20  # n = 19
  # α = 0.1: level ⌈20·0.9⌉/19 = 18/19, "higher" -> index ⌈18·18/19⌉ = 18.
  assert conformal.conformal_quantile(scores[::-1], 0.1) == 0.95
  # α = 0.5: level 10/19 -> index ⌈180/19⌉ = 10.
  assert conformal.conformal_quantile(scores, 0.5) == 0.55
  # n = 5, α = 0.1: ⌈5.4⌉ = 6 > 5, so the level exceeds 1.
  assert conformal.conformal_quantile(scores[:5], 0.1) == 1.0
  # (n+1)(1−α) = 19 exactly in real arithmetic: level 19/19, the maximum.
  assert conformal.conformal_quantile(np.arange(19) / 19, 0.05) == 18 / 19


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5])
def test_conformal_quantile_rejects_alpha(alpha):
  with pytest.raises(ValueError, match="alpha"):
    conformal.conformal_quantile(np.ones(5), alpha)


def test_conformal_quantile_rejects_empty():
  with pytest.raises(ValueError, match="scores"):
    unchecked(conformal.conformal_quantile)(np.zeros((0,)), 0.1)


def test_prediction_sets():
  probs = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]])
  np.testing.assert_array_equal(
    conformal.prediction_sets(probs, 0.7), [[1, 0, 0], [1, 1, 0]]
  )
  np.testing.assert_array_equal(
    conformal.prediction_sets(probs, np.array([0.9, 0.6])),
    [[1, 1, 1], [1, 0, 0]],
  )
  assert conformal.prediction_sets(probs, 1.0).all()


def _split(rng, n, num_exits=3, num_classes=10):
  """Labels drawn from the probabilities: exchangeable and calibrated."""
  probs = rng.dirichlet(np.full(num_classes, 0.3), size=(n, num_exits))
  exits = rng.choice(num_exits, size=n, p=[0.5, 0.3, 0.2])
  p_exit = probs[np.arange(n), exits]
  labels = (p_exit.cumsum(1) > rng.random((n, 1))).argmax(1)
  return probs, exits, labels


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_per_exit_coverage(alpha):
  rng = np.random.default_rng(0)
  val, test = _split(rng, 3000), _split(rng, 3000)
  res = conformal.per_exit_conformal(*val, *test, alpha=alpha)
  assert res.coverage >= 1 - alpha - 0.02
  assert res.coverage <= 1 - alpha + 0.04
  assert 1 <= res.mean_set_size < 10
  assert res.qhat.shape == (3,) and res.alpha == alpha


def test_per_exit_fallback():
  rng = np.random.default_rng(1)
  probs, exits, labels = _split(rng, 400)
  exits = np.where(exits == 2, 1, exits)
  exits[:5] = 2  # only 5 validation examples exited at the last exit
  scores = 1 - probs[np.arange(400), :, labels]  # [N, L]
  res = conformal.per_exit_conformal(
    probs, exits, labels, *_split(rng, 50), alpha=0.1
  )
  for k in (0, 1):
    assert res.qhat[k] == conformal.conformal_quantile(
      scores[exits == k, k], 0.1
    )
  assert res.qhat[2] == conformal.conformal_quantile(scores[:, 2], 0.1)
  assert res.qhat[2] != conformal.conformal_quantile(scores[:5, 2], 0.1)
  res = conformal.per_exit_conformal(
    probs, exits, labels, *_split(rng, 50), alpha=0.1, min_points=5
  )
  assert res.qhat[2] == conformal.conformal_quantile(scores[:5, 2], 0.1)


def test_per_exit_coverage_counts_by_own_exit():
  # One class is certain at exit 1 and uniform at exit 0.
  probs = np.stack([np.full((40, 2), 0.5), np.tile([1.0, 0.0], (40, 1))], 1)
  labels = np.zeros(40, int)
  res = conformal.per_exit_conformal(
    probs, np.ones(40, int), labels, probs, np.ones(40, int), labels, alpha=0.1
  )
  assert res.coverage == 1.0 and res.mean_set_size == 1.0
  res = conformal.per_exit_conformal(
    probs,
    np.zeros(40, int),
    labels,
    probs,
    np.zeros(40, int),
    labels,
    alpha=0.1,
  )
  assert res.mean_set_size == 2.0


def test_per_exit_rejects():
  probs, exits, labels = _split(np.random.default_rng(2), 30)
  with pytest.raises(ValueError, match="alpha"):
    conformal.per_exit_conformal(
      probs, exits, labels, probs, exits, labels, alpha=1.0
    )
  with pytest.raises(ValueError, match="test_exit"):
    conformal.per_exit_conformal(
      probs, exits, labels, probs, exits + 3, labels, alpha=0.1
    )
  with pytest.raises(ValueError, match="val_labels"):
    conformal.per_exit_conformal(
      probs, exits, labels + 10, probs, exits, labels, alpha=0.1
    )
  with pytest.raises(ValueError, match="share"):
    unchecked(conformal.per_exit_conformal)(
      probs, exits, labels, probs[:, :2], exits % 2, labels, alpha=0.1
    )
