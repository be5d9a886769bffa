"""DYNAMAX's statistics, cost accounting and distillation helpers."""

import jax.numpy as jnp
import numpy as np
import pytest

from experiments.dynamax import distill, evaluate, summary
from jaxexit import stats
from jaxexit.decoding.engine import DecodeOutput


def test_batch_sums_group_consecutive_questions():
  values = [[1, 2], [0, 3], [2, 2], [1, 1], [0, 4]]
  sums = summary.batch_sums(values, 2)
  assert sums.tolist() == [[1, 5], [3, 3], [0, 4]]
  assert summary.ratio(sums) == pytest.approx(4 / 12)
  # [P] values count 1 each: the ratio is their mean.
  assert summary.batch_sums([1, 0, 1], 2).tolist() == [[1, 2], [1, 1]]


def test_interval_at_batch_one_is_the_bootstrap_over_questions():
  acc = np.random.default_rng(0).integers(0, 2, 50).astype(float)
  mine = summary.interval(acc, 1)
  ref = stats.bootstrap_interval(np.stack([acc, np.ones(50)], 1), summary.ratio)
  assert (mine.mean, mine.lo, mine.hi) == (ref.mean, ref.lo, ref.hi)
  assert mine.mean == pytest.approx(acc.mean())
  # Batches of 5 are the resampled unit: fewer, larger units.
  assert summary.interval(acc, 5).n == 10


def _records(method_acc, method_flops):
  full = {
    "backbone": "b",
    "classifier": "none",
    "rule": None,
    "state_mode": "full",
    "threshold": None,
    "decode_batch": 2,
    "num_layers": 4,
    "per_question": {"accuracy": [1.0, 0.0] * 20},
  }
  point = {
    **full,
    "classifier": "mlp",
    "rule": "learned",
    "state_mode": "freeze",
    "threshold": 0.5,
    "tokens_per_s": 2.0,
    "full_tokens_per_s": 1.0,
    "per_question": {
      "accuracy": method_acc,
      "consistency": [[3, 4]] * 40,
      "flops": [[f * 10, 10] for f in method_flops],
      "layers": [[20, 10]] * 40,
    },
  }
  return [full, point]


def test_verdicts_come_from_the_per_question_data():
  same = [1.0, 0.0] * 20
  records = _records(same, [0.5] * 40)
  summary.summarise(records)
  point = records[1]
  assert point["accuracy_vs_full"]["verdict"] == "reproduced"  # Δ = 0
  assert point["saves_compute"]["verdict"] == "reproduced"  # 0.5 < 1
  assert point["flops_fraction"] == 0.5 and point["avg_layers"] == 2.0
  assert point["consistency"] == 0.75
  assert point["realised_speedup"] == 2.0
  assert point["theoretical_speedup"] == 2.0
  # Every answer wrong where the full model is right half the time, at
  # 1.5x the FLOPs: both verdicts turn.
  records = _records([0.0] * 40, [1.5] * 40)
  summary.summarise(records)
  assert records[1]["accuracy_vs_full"]["verdict"] == "contradicted"
  assert records[1]["saves_compute"]["verdict"] == "contradicted"
  assert records[1]["accuracy_vs_full"]["diff_mean"] == -0.5


def test_mamba_classifier_updates_are_counted():
  zeros = jnp.zeros((2, 3), jnp.int32)
  out = DecodeOutput.empty(2, 3, 0)
  out = DecodeOutput(
    **{
      **out.__dict__,
      "scores_computed": zeros + jnp.array([[0, 1, 3]]),
      "segments_run": zeros + jnp.array([[4, 2, 4]]),
    }
  )
  freeze = evaluate.classifier_updates(out, "mamba", "freeze", 3)
  assert freeze[0].tolist() == [0, 1, 3]  # one per exit scored
  propagate = evaluate.classifier_updates(out, "mamba", "propagate", 3)
  # + each exit the token skipped (3 exits, 2 segments run: 1 skipped).
  assert propagate[0].tolist() == [0, 2, 3]
  assert not evaluate.classifier_updates(out, "mlp", "propagate", 3).any()


def test_in_batches_fills_and_trims_the_last_batch():
  calls = []

  def fn(p, n):
    calls.append(p.shape)
    return p[:, :1] * 10 + n[:, None]

  prompts = np.arange(5)[:, None].repeat(2, 1)
  out = evaluate.in_batches(fn, prompts, np.arange(5), 2)
  assert calls == [(2, 2)] * 3  # one shape for every call
  assert out[:, 0].tolist() == [0, 11, 22, 33, 44]


def test_documents_and_agreement():
  corpus = distill.AnswerCorpus(
    ["q1", "q2"], [[1, 5, 6], [7, 8]], [[9, 2], [3, 4]]
  )
  # BOS=1 and EOS=2 are dropped where present: pack_documents adds them.
  assert corpus.documents(1, 2) == [[5, 6, 9], [7, 8, 3, 4]]
  got = distill.agreement(
    [[4, 5, 7], [1]], [[4, 6, 7, 8], [2, 3]], ["a b c", "x"], ["a b", "y"]
  )
  assert got["tokens"] == [[2, 4], [0, 2]]
  assert got["rouge_l"][1] == 0.0 and got["rouge_l"][0] == pytest.approx(0.8)
  assert got["exact"] == [0.0, 0.0]
