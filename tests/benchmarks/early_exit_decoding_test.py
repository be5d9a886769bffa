import importlib.util
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxexit.decoding.exit_heads import LMHeadExits
from jaxexit.decoding.full import generate_full
from jaxexit.methods.dynamax import ExitClassifierConfig, ExitClassifiers
from jaxexit.models.llama import LlamaConfig, LlamaLM
from tests.tiers import heavy

_DIR = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
  spec = importlib.util.spec_from_file_location(name, _DIR / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module
  spec.loader.exec_module(module)
  return module


bench = _load("early_exit_decoding")
heads_lib = sys.modules["decoding_heads"]
# What every decoding benchmark record carries (issue 19); the
# self-speculative benchmark's test reads it too.
RECORD_KEYS = (
  "state_mode",
  "backbone",
  "batch",
  "tokens_per_s",
  "full_tokens_per_s",
  "realised_speedup",
  "theoretical_speedup",
  "consistency",
  "identical_to_full",
)
LOSSLESS = ("full", "exits_disabled", "self_speculative")


def test_committed_quick_results_carry_the_required_fields():
  """The committed `--quick` run (the run itself is the heavy tier's
  test_bench_records_on_a_tiny_decoder): every record has the fields, the
  self-speculative mode is there, and the lossless modes are identical to
  the full model."""
  path = _DIR / "results" / "early_exit_decoding_quick.json"
  records = json.loads(path.read_text())
  assert records
  for r in records:
    assert set(RECORD_KEYS) <= set(r), r
    assert isinstance(r["identical_to_full"], bool)
    if r["state_mode"] in LOSSLESS:
      assert r["identical_to_full"], r
  assert "self_speculative" in {r["state_mode"] for r in records}


def _tiny():
  return LlamaLM(
    LlamaConfig(
      vocab_size=32,
      d_model=16,
      num_layers=4,
      num_heads=4,
      num_kv_heads=2,
      mlp_hidden=32,
      max_position=64,
    ),
    rngs=nnx.Rngs(0),
  )


@pytest.mark.parametrize(
  "field, value",
  [
    ("num_prompts", 1),
    ("max_new_tokens", 1),
    ("repeats", 0),
    ("batches", (3,)),
    ("agreement_targets", (1.5,)),
  ],
)
def test_settings_reject_bad_values(field, value):
  with pytest.raises(ValueError, match=field):
    bench.Settings(**({"num_prompts": 8} | {field: value}))


def test_methods_time_fewer_settings_past_batch_one():
  one, eight = bench.methods((0.99, 0.9), 1), bench.methods((0.99, 0.9), 8)
  assert set(eight) < set(one)
  assert {m.heads for m in eight} == {"mlp", "lm_head"}
  assert len({m.name for m in one}) == len(one)


def test_answer_features_keep_only_answer_positions():
  model = _tiny()
  prompts = np.array([[3, 7, 1, 9], [5, 8, 0, 0]], np.int32)
  lengths = np.array([4, 2], np.int32)
  answers = np.array([[11, 12, 13, 14], [21, 22, 23, 24]], np.int32)
  feats = heads_lib.answer_features(model, prompts, lengths, answers, (2,), 3)
  # 2 prompts x 3 positions (predicting answer tokens 2..4), rows of 3.
  np.testing.assert_array_equal(feats.targets, [[12, 13, 14], [22, 23, 24]])
  assert feats.hidden.shape == (2, 3, 1, 16) and feats.mask.all()


def test_pick_thresholds_reach_their_simulated_agreement():
  model = _tiny()
  prompts = np.array([[3, 7, 1, 9, 4], [5, 8, 2, 6, 1]], np.int32)
  lengths = np.array([5, 5], np.int32)
  n = 8
  full = np.asarray(generate_full(model, prompts, lengths, max_new_tokens=n))
  seqs, seq_lengths = bench.teacher_forced(prompts, lengths, full)
  targets = (1.0, 0.6, 0.2)
  chosen = bench.pick_thresholds(
    model,
    LMHeadExits(),
    "max_softmax",
    (1, 2, 3),
    seqs,
    seq_lengths,
    lengths,
    n,
    targets,
  )
  lams = [chosen[t][0] for t in targets]
  assert lams == sorted(lams, reverse=True)  # stricter target, higher λ
  for t in targets:
    assert chosen[t][1] >= t
  assert chosen[0.2][0] < 1.0  # a random model still exits somewhere


def test_exit_view_is_exit_e_alone():
  cfg = ExitClassifierConfig(kind="mlp", num_exits=3, d_model=16)
  heads = ExitClassifiers(cfg, rngs=nnx.Rngs(1))
  # Non-zero output projections, so the exits differ.
  for e, m in enumerate(heads.exits):
    m.down.kernel.value = m.down.kernel.value + 0.1 * (e + 1)
  model = _tiny()
  h = jax.random.normal(jax.random.key(0), (1, 2, 16))
  pos, valid = jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), bool)
  view = bench.exit_view(heads, 2)
  got, _ = view(model, 0, h, (), pos, valid)
  want, _ = heads(model, 2, h, (), pos, valid)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(view.score(model, 0, h), heads.score(model, 2, h))


@heavy  # compiles ~10 decoders (~1 min on 2 cores)
def test_bench_records_on_a_tiny_decoder(tmp_path):
  model = _tiny()
  settings = bench.Settings(
    num_prompts=2,
    max_new_tokens=6,
    batches=(1, 2),
    exit_layers=(1, 2, 3),
    agreement_targets=(0.9, 0.3),
    spec_grid=((2, 2),),
    spec_search_prompts=1,
  )
  cfg = ExitClassifierConfig(kind="mlp", num_exits=3, d_model=16)
  heads = ExitClassifiers(cfg, rngs=nnx.Rngs(0))
  prompts = np.array([[3, 7, 1, 9, 4], [5, 8, 2, 0, 0]], np.int32)
  lengths = np.array([5, 3], np.int32)
  scorer = lambda answers: (np.asarray(answers)[:, 0] % 2).astype(float)
  b = bench.Bench(model, heads, prompts, lengths, scorer, settings, print)
  records = b.measure(1) + b.measure(2)
  by_mode = {}
  for r in records:
    by_mode.setdefault(r["state_mode"], []).append(r)
    for key in RECORD_KEYS:
      assert key in r, (key, r)
    assert 0.0 <= r["consistency"] <= 1.0
  # Lossless settings reproduce the full model token for token.
  for mode in LOSSLESS:
    assert all(r["identical_to_full"] for r in by_mode[mode]), mode
  frozen = by_mode["freeze"]
  assert {r["batch"] for r in frozen} == {1, 2}
  for r in frozen:
    assert abs(sum(r["exit_shares"].values()) - 1.0) < 1e-3
    assert 1.0 <= r["avg_layers"] <= 4.0
  json.dumps(records)
