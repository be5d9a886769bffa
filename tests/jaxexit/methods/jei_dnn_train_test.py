"""Tests for jaxexit.methods.jei_dnn_train (warm-up and alternation)."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxexit.methods import jei_dnn, jei_dnn_train
from tests.tiers import slow


def _synthetic(n, seed, d=8, g=2, c=3):
  """Features whose block l carries the label with noise shrinking in l."""
  centres = np.random.default_rng(0).normal(size=(c, d))
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, c, n).astype(np.int32)
  noise = np.array([1.5, 0.3])[None, :, None] * rng.normal(size=(n, g, d))
  feats = (centres[labels][:, None] + noise).astype(np.float32)
  final = 6.0 * np.eye(c, dtype=np.float32)[labels]
  return jei_dnn.CachedFeatures(feats, final, labels)


@slow
def test_training_trades_accuracy_for_cost():
  train, val = _synthetic(512, 0), _synthetic(256, 1)
  cfg = jei_dnn_train.JeiTrainConfig(
    batch_size=32,
    warmup_steps=100,
    steps=160,
    alternate_every=40,
    learning_rate=0.05,
    end_lr=1e-3,
  )
  heads = jei_dnn.JeiHeads(8, 3, 2, rngs=nnx.Rngs(0))
  warm = jei_dnn_train.warm_up(heads, train, cfg, progress=False)
  before = jei_dnn.jei_outputs(heads, val)
  after = jei_dnn.jei_outputs(warm, val)
  acc = lambda o: (o.logits[:, 0].argmax(-1) == val.labels).mean()
  assert acc(after) > acc(before) + 0.2
  np.testing.assert_array_equal(warm.gates.kernel[...], heads.gates.kernel[...])
  costs = jnp.array([0.4, 0.7, 1.0])
  mean_exit = {}
  for gamma in (0.0, 5.0):
    trained = jei_dnn_train.train_gated(
      warm, train, val, costs, gamma, cfg, progress=False
    )
    mean_exit[gamma] = jei_dnn.jei_outputs(trained, val).exit_layer.mean()
  assert mean_exit[5.0] < mean_exit[0.0] - 0.5, mean_exit
  with pytest.raises(ValueError, match="gamma"):
    jei_dnn_train.train_gated(
      warm, train, val, costs, -1.0, cfg, progress=False
    )
  with pytest.raises(ValueError, match="costs"):
    jei_dnn_train.train_gated(
      warm, train, val, costs[:2], 1.0, cfg, progress=False
    )


def test_bad_config():
  with pytest.raises(ValueError, match="JeiTrainConfig.steps"):
    jei_dnn_train.JeiTrainConfig(steps=0)
  with pytest.raises(ValueError, match="end_lr"):
    jei_dnn_train.JeiTrainConfig(learning_rate=0.01, end_lr=0.1)
