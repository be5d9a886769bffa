"""Tests for jaxexit.calibration (reliability bins and ECE)."""

import numpy as np
import pytest

from jaxexit import calibration
from tests.jaxexit.exits.rule_driver import unchecked

CONF = np.array([0.9, 0.8, 0.6, 0.3])
CORRECT = np.array([True, False, True, False])


def test_equal_mass_hand_example():
  # Bins {0.3, 0.6} (conf 0.45, acc 0.5) and {0.8, 0.9} (conf 0.85, acc 0.5):
  # ECE = 0.5·0.05 + 0.5·0.35 = 0.2.
  bins = calibration.reliability_bins(CONF, CORRECT, num_bins=2)
  np.testing.assert_allclose(bins.confidence, [0.45, 0.85])
  np.testing.assert_allclose(bins.accuracy, [0.5, 0.5])
  np.testing.assert_array_equal(bins.count, [2, 2])
  np.testing.assert_allclose(bins.edges, [0.0, 0.7, 1.0])
  assert calibration.expected_calibration_error(
    CONF, CORRECT, num_bins=2
  ) == pytest.approx(0.2)


def test_equal_width_hand_example():
  # [0, 0.5): {0.3} wrong -> 0.25·0.3; [0.5, 1]: conf 0.7667, acc 2/3.
  ece = calibration.expected_calibration_error(
    CONF, CORRECT, num_bins=2, binning="equal_width"
  )
  assert ece == pytest.approx(0.25 * 0.3 + 0.75 * (2.3 / 3 - 2 / 3))
  bins = calibration.reliability_bins(
    CONF, CORRECT, num_bins=4, binning="equal_width"
  )
  np.testing.assert_array_equal(bins.count, [0, 1, 1, 2])
  assert np.isnan(bins.accuracy[0]) and np.isnan(bins.confidence[0])
  # Confidence 1.0 falls in the last (closed) bin.
  bins = calibration.reliability_bins(
    np.array([1.0, 0.0]), np.array([1, 0]), num_bins=3, binning="equal_width"
  )
  np.testing.assert_array_equal(bins.count, [1, 0, 1])


def test_equal_mass_default_bins_and_small_n():
  rng = np.random.default_rng(0)
  conf = rng.random(45)
  bins = calibration.reliability_bins(conf, rng.random(45) < conf)
  np.testing.assert_array_equal(bins.count, [3] * 15)
  assert bins.edges.shape == (16,) and np.all(np.diff(bins.edges) >= 0)
  assert calibration.reliability_bins(CONF, CORRECT).count.tolist() == [1] * 4


def test_perfect_and_worst_calibration():
  ones = np.ones(20)
  assert calibration.expected_calibration_error(ones, ones) == 0.0
  assert calibration.expected_calibration_error(
    ones, 0 * ones
  ) == pytest.approx(1.0)


@pytest.mark.parametrize(
  "conf, correct, match",
  [
    ([1.2, 0.5], [1, 0], "confidence"),
    ([-0.1, 0.5], [1, 0], "confidence"),
    ([0.5, 0.5], [1, 0, 1], "same length|one length"),
    ([], [], "non-empty"),
    ([0.5, 0.5], [2, 0], "correct"),
  ],
)
def test_rejects_bad_input(conf, correct, match):
  with pytest.raises(ValueError, match=match):
    unchecked(calibration.expected_calibration_error)(
      np.array(conf), np.array(correct)
    )


def test_rejects_bad_options():
  with pytest.raises(ValueError, match="binning"):
    calibration.reliability_bins(CONF, CORRECT, binning="quantile")
  with pytest.raises(ValueError, match="num_bins"):
    calibration.reliability_bins(CONF, CORRECT, num_bins=0)
