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


def _cfg(**kw):
  return jei_dnn_train.JeiTrainConfig(
    batch_size=32, steps=1, learning_rate=0.05, end_lr=1e-3, **kw
  )


def _im_accuracy(heads, data):
  im = heads.im_logits(jnp.asarray(data.features))
  return np.asarray((im.argmax(-1) == data.labels[:, None]).mean(0))


def test_warmup_keeps_each_ims_best_checked_weights():
  train, val = _synthetic(256, 0), _synthetic(128, 1)
  heads = jei_dnn.JeiHeads(8, 3, 2, rngs=nnx.Rngs(0))
  # One check at the last step: the same weights as no early stopping.
  once = _cfg(warmup_steps=30, warmup_eval_every=30)
  plain = jei_dnn_train.warm_up(heads, train, once, progress=False)
  checked = jei_dnn_train.warm_up(heads, train, once, val=val, progress=False)
  np.testing.assert_allclose(
    checked.ims.kernel[...], plain.ims.kernel[...], rtol=1e-6
  )
  # Patience 1: every IM ends at least as good as at the first check.
  first = jei_dnn_train.warm_up(
    heads, train, _cfg(warmup_steps=5), progress=False
  )
  stopped = jei_dnn_train.warm_up(
    heads,
    train,
    _cfg(warmup_steps=60, warmup_eval_every=5, warmup_patience=1),
    val=val,
    progress=False,
  )
  assert np.all(_im_accuracy(stopped, val) >= _im_accuracy(first, val))
