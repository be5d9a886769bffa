"""Tests for jaxexit.stats (intervals, Pareto fronts, verdicts)."""

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from jaxexit import stats

_CONF = 0.95


@pytest.mark.parametrize("p", [0.6, 0.9, 0.95, 0.975, 0.995, 0.9995])
def test_t_quantile_matches_scipy(p):
  for df in range(1, 201):
    want = sps.t.ppf(p, df)
    assert stats.t_quantile(p, df) == pytest.approx(want, abs=1e-6, rel=1e-9)
  assert stats.t_quantile(1 - p, 7) == pytest.approx(sps.t.ppf(1 - p, 7))
  assert stats.t_quantile(p, 2.5) == pytest.approx(sps.t.ppf(p, 2.5))


def test_t_quantile_median_and_large_df():
  assert stats.t_quantile(0.5, 3) == 0.0
  assert stats.t_quantile(0.975, 1e6) == pytest.approx(1.959966, abs=1e-5)


def test_t_interval_matches_scipy():
  x = np.array([81.2, 83.0, 82.9, 80.7, 84.1])
  got = stats.t_interval(x)
  lo, hi = sps.t.interval(_CONF, x.size - 1, loc=x.mean(), scale=sps.sem(x))
  assert (got.lo, got.hi) == (pytest.approx(lo), pytest.approx(hi))
  assert got.mean == pytest.approx(x.mean())
  assert (got.n, got.kind, got.confidence) == (5, "t", 0.95)
  got99 = stats.t_interval(list(x), confidence=0.99)
  assert got99.lo < got.lo and got99.hi > got.hi


def test_single_value_has_no_interval():
  got = stats.t_interval([0.823])
  assert got.mean == pytest.approx(0.823) and got.n == 1
  assert math.isnan(got.lo) and math.isnan(got.hi)
  assert got.as_list() == [None, None]
  assert not got.excludes(0.0)
  assert got.format(scale=100) == "82.3 (n=1)"
  json.dumps(got.as_list())


def test_interval_helpers():
  iv = stats.Interval(0.823, 0.81, 0.836, 4, "t")
  assert iv.format(scale=100) == "82.3 [81.0, 83.6]"
  assert iv.format(digits=3) == "0.823 [0.810, 0.836]"
  assert iv.as_list() == [0.81, 0.836]
  assert iv.excludes(0.8) and iv.excludes(0.9) and not iv.excludes(0.82)


def _wilson_textbook(k, n, z=1.959963984540054):
  p = k / n
  centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
  half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
  return centre - half, centre + half


@pytest.mark.parametrize("k", [0, 1, 5, 9, 10])
def test_wilson_matches_formula(k):
  got = stats.wilson_interval(k, 10)
  lo, hi = _wilson_textbook(k, 10)
  assert got.lo == pytest.approx(max(lo, 0.0), abs=1e-12)
  assert got.hi == pytest.approx(min(hi, 1.0), abs=1e-12)
  assert got.mean == k / 10 and got.kind == "wilson" and got.n == 10
  assert 0.0 <= got.lo <= got.mean <= got.hi <= 1.0


def test_wilson_known_values():
  # z = Φ⁻¹(0.975) = 1.959964: 0/10 -> [0, z²/(n+z²)] exactly; 5/10 is
  # symmetric about 0.5.
  z2 = 1.959963984540054**2
  assert stats.wilson_interval(0, 10).as_list() == [
    0.0,
    round(z2 / (10 + z2), 6),
  ]
  assert stats.wilson_interval(0, 10).as_list() == [0.0, 0.277533]
  np.testing.assert_allclose(
    stats.wilson_interval(5, 10).as_list(), [0.236593, 0.763407], atol=1e-6
  )
  assert stats.wilson_interval(np.int64(10), 10).as_list() == [0.722467, 1.0]


def test_bootstrap_deterministic_and_covers():
  rng = np.random.default_rng(0)
  x = rng.normal(size=200)
  a = stats.bootstrap_interval(x, num_resamples=500, seed=3)
  b = stats.bootstrap_interval(x, num_resamples=500, seed=3)
  c = stats.bootstrap_interval(x, num_resamples=500, seed=4)
  assert a == b and a != c and a.kind == "bootstrap" and a.n == 200
  # Close to the normal-theory interval mean ± 1.96 sd/√n.
  half = 1.96 * x.std(ddof=1) / math.sqrt(x.size)
  assert a.lo == pytest.approx(x.mean() - half, abs=0.03)
  assert a.hi == pytest.approx(x.mean() + half, abs=0.03)
  # Coverage sanity: the true mean 0 lies inside most of 40 intervals.
  hits = sum(
    not stats.bootstrap_interval(
      rng.normal(size=50), num_resamples=200, seed=i
    ).excludes(0.0)
    for i in range(40)
  )
  assert hits >= 33


def test_bootstrap_over_rows_and_custom_statistic():
  x = np.stack([np.arange(10.0), np.arange(10.0)], axis=1)  # [N=10, 2]
  iv = stats.bootstrap_interval(x, num_resamples=100)
  assert iv.n == 10 and iv.mean == pytest.approx(4.5)
  med = stats.bootstrap_interval(np.arange(11.0), np.median, num_resamples=100)
  assert med.mean == 5.0 and med.lo <= 5.0 <= med.hi
  single = stats.bootstrap_interval([1.0])
  assert single.mean == 1.0 and not single.defined


def test_paired_t_interval():
  a = np.array([0.80, 0.82, 0.81])
  b = a - np.array([0.05, 0.04, 0.06])
  got = stats.paired_t_interval(a, b)
  want = stats.t_interval(a - b)
  assert (got.mean, got.lo, got.hi) == (
    pytest.approx(want.mean),
    pytest.approx(want.lo),
    pytest.approx(want.hi),
  )
  assert got.kind == "paired_t" and got.excludes(0.0)


def test_paired_bootstrap_difference():
  rng = np.random.default_rng(1)
  base = (rng.random(1000) < 0.7).astype(float)
  flip = rng.random(1000) < 0.1  # the method fixes 10% of the examples
  method = np.maximum(base, flip)
  got = stats.paired_bootstrap_difference(method, base, num_resamples=500)
  assert got.kind == "paired_bootstrap" and got.n == 1000
  assert got.mean == pytest.approx(method.mean() - base.mean())
  assert got.lo > 0.0
  # Pairing matters: the unpaired sum of two Wilson halves is wider.
  wa, wb = (
    stats.wilson_interval(int(method.sum()), 1000),
    stats.wilson_interval(int(base.sum()), 1000),
  )
  assert got.hi - got.lo < (wa.hi - wa.lo) + (wb.hi - wb.lo)
  same = stats.paired_bootstrap_difference(base, base, num_resamples=50)
  assert (same.mean, same.lo, same.hi) == (0.0, 0.0, 0.0)


def test_pareto_front():
  costs = [3.0, 1.0, 2.0, 2.0, 4.0, 5.0]
  scores = [0.7, 0.5, 0.6, 0.65, 0.6, 0.8]
  c, s = stats.pareto_front(costs, scores)
  np.testing.assert_array_equal(c, [1.0, 2.0, 3.0, 5.0])
  np.testing.assert_array_equal(s, [0.5, 0.65, 0.7, 0.8])


def test_interpolate_on_grid():
  got = stats.interpolate_on_grid(
    [1.0, 3.0, 2.0], [0.5, 0.7, 0.4], [0.5, 1.0, 2.0, 3.0, 3.5]
  )
  np.testing.assert_allclose(got, [np.nan, 0.5, 0.6, 0.7, np.nan])


def _curves(shift, seeds=3, noise=0.2, noise_seed=42):
  rng = np.random.default_rng(noise_seed)
  costs = np.linspace(4.0, 12.0, 9)
  return [
    (costs, 60.0 + 2.0 * costs + shift + rng.normal(0, noise, 9))
    for _ in range(seeds)
  ]


def test_matched_cost_difference_verdicts():
  base = _curves(0.0)
  same = stats.matched_cost_difference(base, base)
  assert same.kind == "paired_t" and same.n == 3 and not same.excludes(0.0)
  assert stats.verdict(same, paper_effect=0.0) == "inconclusive"
  # Identical curves with independent noise: the CI contains 0. It also
  # lies below a claimed gain of 5 points, which it therefore contradicts,
  # while a claimed gain of 0.1 stays inconclusive (CI [-0.35, 0.20]).
  other = _curves(0.0, noise_seed=7)
  noisy = stats.matched_cost_difference(other, base)
  assert not noisy.excludes(0.0) and noisy.hi > 0.1
  assert stats.verdict(noisy, paper_effect=0.1) == "inconclusive"
  assert stats.verdict(noisy, paper_effect=5.0) == "contradicted"
  up = stats.matched_cost_difference(_curves(5.0, noise_seed=7), base)
  assert up.mean == pytest.approx(5.0, abs=0.5) and up.hi - up.lo > 0.1
  assert stats.verdict(up, paper_effect=5.0) == "reproduced"
  down = stats.matched_cost_difference(_curves(-5.0, noise_seed=7), base)
  assert stats.verdict(down, paper_effect=5.0) == "contradicted"
  # A cost-like metric where the paper claims "lower": direction −1.
  assert stats.verdict(down, paper_effect=5.0, direction=-1) == "reproduced"


def test_matched_cost_grid_overlap():
  a = [([1.0, 2.0, 4.0], [0.1, 0.2, 0.4])]
  b = [([3.0, 6.0], [0.3, 0.5])]
  np.testing.assert_allclose(stats.matched_cost_grid(a, b, 3), [3.0, 3.5, 4.0])
  # One operating point inside the other's range: a grid of that point.
  single = [([3.0], [0.35])]
  np.testing.assert_allclose(stats.matched_cost_grid(single, b), [3.0])
  iv = stats.matched_cost_difference(single, b)
  assert iv.mean == pytest.approx(0.05) and iv.n == 1
  assert stats.verdict(iv, paper_effect=0.0) == "inconclusive (n < 2)"
  # No overlap.
  far = [([7.0, 8.0], [0.9, 0.95])]
  assert stats.matched_cost_grid(a, far).size == 0
  none = stats.matched_cost_difference(a, far)
  assert none.kind == "no_overlap" and math.isnan(none.mean)
  assert stats.verdict(none, paper_effect=1.0) == (
    "inconclusive (no matched cost)"
  )
  assert none.format() == "no matched cost (n=1)"


def test_verdict_rules():
  overlapping = stats.Interval(1.0, -1.0, 3.0, 5, "paired_t")
  assert stats.verdict(overlapping, paper_effect=2.0) == "inconclusive"
  below_effect = stats.Interval(0.5, -0.5, 1.5, 5, "paired_t")
  assert stats.verdict(below_effect, paper_effect=2.0) == "contradicted"
  small_win = stats.Interval(0.5, 0.1, 0.9, 5, "paired_t")
  assert stats.verdict(small_win, paper_effect=2.0) == "reproduced"
  one_seed = stats.Interval(10.0, math.nan, math.nan, 1, "t")
  assert stats.verdict(one_seed, paper_effect=0.0) == "inconclusive (n < 2)"
  assert set(stats.VERDICTS) == {"reproduced", "contradicted", "inconclusive"}


def test_verdict_record_is_json():
  rec = stats.verdict_record(
    stats.Interval(0.5, 0.1, 0.9, 5, "paired_t"), paper_effect=2.0
  )
  assert rec == {
    "verdict": "reproduced",
    "diff_mean": 0.5,
    "diff_ci": [0.1, 0.9],
    "n": 5,
    "paper_effect": 2.0,
  }
  rec = stats.verdict_record(stats.t_interval([1.0]), paper_effect=1)
  assert json.loads(json.dumps(rec))["diff_ci"] == [None, None]


@pytest.mark.parametrize(
  "call, name",
  [
    (lambda: stats.t_interval([1.0, 2.0], confidence=1.0), "confidence"),
    (lambda: stats.t_interval([]), "values"),
    (lambda: stats.t_interval([1.0, math.nan]), "values"),
    (lambda: stats.t_quantile(0.0, 3), "p"),
    (lambda: stats.t_quantile(0.9, 0), "df"),
    (lambda: stats.paired_t_interval([1.0, 2.0], [1.0]), "len(b)"),
    (
      lambda: stats.bootstrap_interval([1.0, 2.0], num_resamples=0),
      "num_resamples",
    ),
    (lambda: stats.bootstrap_interval(np.zeros((0, 3))), "values"),
    (lambda: stats.paired_bootstrap_difference([1.0], [1.0, 2.0]), "len(a)"),
    (lambda: stats.wilson_interval(11, 10), "successes"),
    (lambda: stats.wilson_interval(-1, 10), "successes"),
    (lambda: stats.wilson_interval(0, 0), "trials"),
    (lambda: stats.pareto_front([1.0, 2.0], [1.0]), "scores"),
    (lambda: stats.matched_cost_difference([], []), "curves_a"),
    (
      lambda: stats.matched_cost_difference(_curves(0.0), _curves(0.0, 2)),
      "len(curves_b)",
    ),
    (
      lambda: stats.matched_cost_grid(_curves(0.0), _curves(0.0), 0),
      "grid_size",
    ),
    (
      lambda: stats.verdict(
        stats.t_interval([1.0, 2.0]), paper_effect=1.0, direction=2
      ),
      "direction",
    ),
    (
      lambda: stats.verdict(stats.t_interval([1.0, 2.0]), paper_effect=-1.0),
      "paper_effect",
    ),
  ],
)
def test_bad_input_names_the_argument(call, name):
  with pytest.raises(
    ValueError, match=name.replace("(", r"\(").replace(")", r"\)")
  ):
    call()
