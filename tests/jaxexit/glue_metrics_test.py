"""Tests for jaxexit.glue_metrics against hand computations and SciPy."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from jaxexit import glue_metrics as gm
from jaxexit.data import glue


def a(*xs):
  return np.asarray(xs)


def test_accuracy_by_hand():
  assert gm.accuracy(a(0, 1, 1, 0), a(0, 1, 0, 0)) == 0.75
  assert gm.accuracy(jnp.array([2, 1]), np.array([2, 1], np.int32)) == 1.0


def test_f1_by_hand():
  # TP=1, FP=1, FN=0: 2/(2+1).
  assert gm.f1(a(0, 1, 1, 0), a(0, 1, 0, 0)) == pytest.approx(2 / 3)
  # TP=2, FP=1, FN=2: precision 2/3, recall 1/2, F1 = 4/7.
  assert gm.f1(a(1, 1, 1, 0, 0), a(1, 1, 0, 1, 1)) == pytest.approx(4 / 7)
  assert gm.f1(a(0, 0), a(0, 0)) == 0.0  # no positives at all
  with pytest.raises(ValueError, match="0 or 1"):
    gm.f1(a(0, 2), a(0, 1))


def test_mcc_by_hand():
  # TP=2, FP=1, TN=2, FN=0: (2*2 - 1*0) / sqrt(3*2*3*2) = 4/6.
  assert gm.matthews_corrcoef(a(1, 1, 0, 0, 1), a(1, 0, 0, 0, 1)) == (
    pytest.approx(2 / 3)
  )
  assert gm.matthews_corrcoef(a(0, 1, 0, 1), a(0, 1, 0, 1)) == 1.0
  assert gm.matthews_corrcoef(a(1, 0, 1, 0), a(0, 1, 0, 1)) == -1.0


def test_mcc_multiclass_by_hand():
  # Confusion [true, pred] = [[1,1,0],[0,1,0],[0,0,1]]: c=3, s=4,
  # t=(2,1,1), p=(1,2,1): (3*4 - 5) / sqrt((16 - 6) * (16 - 6)) = 0.7.
  preds, labels = a(0, 1, 1, 2), a(0, 0, 1, 2)
  assert gm.matthews_corrcoef(preds, labels) == pytest.approx(0.7)


def test_constant_predictions():
  labels = a(0, 1, 1, 0)
  assert gm.matthews_corrcoef(a(1, 1, 1, 1), labels) == 0.0
  assert gm.matthews_corrcoef(labels, a(0, 0, 0, 0)) == 0.0
  assert math.isnan(gm.pearson(a(2.0, 2.0, 2.0, 2.0), a(1.0, 2.0, 3.0, 4.0)))
  assert math.isnan(gm.spearman(a(1.0, 2.0, 3.0), a(0.5, 0.5, 0.5)))
  scores = gm.glue_score("stsb", a(2.0, 2.0, 2.0), a(1.0, 2.0, 3.0))
  assert math.isnan(scores["selection"])


def test_pearson_by_hand():
  # x - mean = (-1, 0, 1), y - mean = (-4/3, -1/3, 5/3): 3 / sqrt(2 * 42/9).
  assert gm.pearson(a(1, 2, 3), a(1, 2, 4)) == pytest.approx(9 / math.sqrt(84))
  assert gm.pearson(a(1.0, 2.0, 3.0), a(-2.0, -4.0, -6.0)) == -1.0


def test_rank_average_ties():
  np.testing.assert_array_equal(
    gm.rank_average(a(10, 20, 20, 5, 20)), [2.0, 4.0, 4.0, 1.0, 4.0]
  )
  np.testing.assert_array_equal(
    gm.rank_average(a(3.0, 1.0, 2.0)), [3.0, 1.0, 2.0]
  )


def test_spearman_by_hand():
  # Monotone but not linear: rho = 1, r < 1.
  x, y = a(1.0, 2.0, 3.0, 4.0), a(1.0, 4.0, 9.0, 100.0)
  assert gm.spearman(x, y) == pytest.approx(1.0)
  assert gm.pearson(x, y) < 0.99
  # Ranks (1, 2.5, 2.5, 4) vs (1, 2, 3, 4): Pearson = 4.5 / sqrt(4.5 * 5).
  assert gm.spearman(a(1, 2, 2, 3), a(1, 2, 3, 4)) == pytest.approx(
    4.5 / math.sqrt(4.5 * 5)
  )


@pytest.mark.parametrize("seed", range(3))
def test_correlations_match_scipy(seed):
  stats = pytest.importorskip("scipy.stats")
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 6, size=50).astype(np.float64)  # many ties
  y = x + rng.normal(size=50)
  assert gm.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
  assert gm.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
  np.testing.assert_array_equal(gm.rank_average(x), stats.rankdata(x))


@pytest.mark.parametrize("seed", range(3))
def test_classification_matches_sklearn(seed):
  metrics = pytest.importorskip("sklearn.metrics")
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, size=40)
  preds = np.where(rng.random(40) < 0.7, labels, 1 - labels)
  assert gm.f1(preds, labels) == pytest.approx(metrics.f1_score(labels, preds))
  assert gm.matthews_corrcoef(preds, labels) == pytest.approx(
    metrics.matthews_corrcoef(labels, preds)
  )
  three = rng.integers(0, 3, size=40)
  guess = np.where(rng.random(40) < 0.6, three, rng.integers(0, 3, size=40))
  assert gm.matthews_corrcoef(guess, three) == pytest.approx(
    metrics.matthews_corrcoef(three, guess)
  )


@pytest.mark.parametrize(
  "fn", [gm.accuracy, gm.f1, gm.matthews_corrcoef, gm.pearson, gm.spearman]
)
def test_empty_input_raises(fn):
  with pytest.raises(ValueError, match="empty"):
    fn(np.zeros(0, np.int32), np.zeros(0, np.int32))


def test_mismatched_lengths_raise():
  # jaxtyping's hook (tests) raises TypeCheckError (a TypeError) before the
  # function's own ValueError (production) can.
  with pytest.raises((ValueError, TypeError)):
    gm.accuracy(a(0, 1), a(0, 1, 1))


def test_non_integer_class_ids_raise():
  with pytest.raises(ValueError, match="class ids"):
    gm.accuracy(a(0.5, 1.0), a(0, 1))


def test_every_registry_metric_is_implemented():
  for task in glue.TASKS.values():
    assert set(task.metrics) <= set(gm.METRICS), task.name
    assert set(task.selection) <= set(task.metrics), task.name


def test_glue_score_keys_and_selection():
  labels, preds = a(1, 0, 1, 1), a(1, 0, 0, 1)
  assert gm.glue_score("cola", preds, labels) == {
    "mcc": pytest.approx(gm.matthews_corrcoef(preds, labels)),
    "selection": pytest.approx(gm.matthews_corrcoef(preds, labels)),
  }
  mrpc = gm.glue_score("MRPC", preds, labels)
  assert set(mrpc) == {"accuracy", "f1", "selection"}
  assert mrpc["selection"] == pytest.approx((0.75 + 0.8) / 2)
  assert gm.glue_score("qqp", preds, labels) == mrpc
  for task in ("sst2", "qnli", "rte", "wnli"):
    assert gm.glue_score(task, preds, labels) == {
      "accuracy": 0.75,
      "selection": 0.75,
    }
  mnli = gm.glue_score("mnli", a(0, 1, 2, 2), a(0, 1, 2, 1))
  assert mnli == {"accuracy": 0.75, "selection": 0.75}
  x, y = a(1.0, 2.0, 3.0, 4.0), a(0.0, 1.0, 4.0, 5.0)
  stsb = gm.glue_score("stsb", x, y)
  assert set(stsb) == {"pearson", "spearman", "selection"}
  assert stsb["selection"] == pytest.approx(
    (gm.pearson(x, y) + gm.spearman(x, y)) / 2
  )


def test_glue_score_rejects_out_of_range_class_ids():
  with pytest.raises(ValueError, match=r"\[0, 2\)"):
    gm.glue_score("rte", a(0, 2), a(0, 1))
  with pytest.raises(ValueError, match="known tasks"):
    gm.glue_score("squad", a(0), a(0))
