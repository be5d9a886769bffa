"""Tests that fail on a collapsed exit model (issue: "look for collapse").

A tiny BERT learns a synthetic task whose examples differ in difficulty:
the label is the majority vote of "class tokens" scattered among neutral
tokens, easy examples carry many class tokens, hard ones few. Trained with
the experiment's own code (`run.train_method`, `run.sweep`, `select`), the
full model must beat the constant predictor, threshold methods must exit
at different layers for different examples, and PALBERT's halting
distribution must depend on the input.
"""

import dataclasses

import numpy as np
import pytest
from flax import nnx

from experiments.palbert_glue import configs, run, select
from jaxexit.methods.encoder_exits import get_method
from jaxexit.models import BertConfig, BertEncoder

T = 16
VOCAB = 40
NEUTRAL = np.arange(3, 20)  # tokens that say nothing about the label
CLASS_TOKENS = (np.arange(20, 30), np.arange(30, 40))


def _split(n: int, seed: int) -> run.Split:
  """Sequences [CLS] x_1..x_14 [SEP]; label 1 iff class-1 tokens outnumber
  class-0 tokens; 1-6 class tokens per example (hard → easy)."""
  rng = np.random.default_rng(seed)
  ids = np.zeros((n, T), np.int32)
  labels = rng.integers(0, 2, n)
  for i in range(n):
    body = rng.choice(NEUTRAL, T - 2)
    k = rng.integers(1, 7)
    minority = rng.integers(0, (k + 1) // 2) if k > 1 else 0
    pos = rng.choice(T - 2, k, replace=False)
    for j, p in enumerate(pos):
      cls = 1 - labels[i] if j < minority else labels[i]
      body[p] = rng.choice(CLASS_TOKENS[cls])
    ids[i] = np.concatenate([[1], body, [2]])
  mask = np.ones_like(ids)
  return run.Split(ids, np.zeros_like(ids), mask, labels.astype(np.int32))


CFG = dataclasses.replace(
    configs.get_config("smoke"), max_len=T, bucket_widths=(T,),
    batch_size=32, eval_batch_size=64, epochs=8.0, learning_rate=3e-3,
    heads_learning_rate=3e-3, halting_learning_rate=3e-3,
    checkpoint_every=1000)
TRAIN, HELDOUT, DEV = _split(640, 0), _split(256, 1), _split(256, 2)


@pytest.fixture(scope="module")
def encoder():
  cfg = BertConfig(vocab_size=VOCAB, hidden_size=32, num_layers=4,
                   num_heads=4, intermediate_size=64,
                   max_position_embeddings=T)
  return BertEncoder(cfg, rngs=nnx.Rngs(0))


def _train_and_choose(encoder, name, tmp_path):
  method = get_method(name)
  heads = dataclasses.replace(method.heads(2), pooling="mean")
  model, _ = run.train_method(encoder, heads, method, TRAIN, CFG, 7,
                              tmp_path / name, progress=False)
  key = __import__("jax").random.key(0)
  held = run.sweep(method, run.per_layer_outputs(model, HELDOUT, CFG),
                   HELDOUT.labels, "sst2", key)
  chosen, degenerate = select.choose(held, tolerance=0.01,
                                     fixed_depth=method.fixed_depth)
  dev_out = run.per_layer_outputs(model, DEV, CFG)
  dev = run.sweep(method, dev_out, DEV.labels, "sst2", key)
  at = next(p for p in dev if p["param"] == chosen["param"])
  return at, degenerate, dev_out


@pytest.mark.slow
def test_full_model_beats_the_majority_class(encoder, tmp_path):
  at, _, _ = _train_and_choose(encoder, "full", tmp_path)
  majority = max(np.mean(DEV.labels), 1 - np.mean(DEV.labels))
  assert at["score"] > majority + 0.2, (at["score"], majority)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["deebert", "pabee", "berxit"])
def test_threshold_exits_vary_across_examples(encoder, tmp_path, name):
  at, degenerate, _ = _train_and_choose(encoder, name, tmp_path)
  assert not degenerate
  assert sum(1 for c in at["exit_histogram"] if c) >= 2, at
  assert at["avg_layers_std_over_examples"] > 0.1, at


@pytest.mark.slow
def test_palbert_halting_depends_on_the_input(encoder, tmp_path):
  at, degenerate, dev_out = _train_and_choose(encoder, "palbert", tmp_path)
  assert run.halting_spread(dev_out) > 0.05
  assert not degenerate
  assert sum(1 for c in at["exit_histogram"] if c) >= 2, at
