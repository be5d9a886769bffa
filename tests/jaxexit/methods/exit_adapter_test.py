"""Exit adapters (`jaxexit.methods.exit_adapter`) on a tiny random Llama."""

import dataclasses

import numpy as np
import pytest
from flax import nnx

from jaxexit.methods import dynamax_train, exit_adapter
from jaxexit.models.llama import LlamaLM
from jaxexit.models.llama_weights import LLAMA_CONFIGS
from jaxexit.train.fingerprint import FingerprintMismatch

TINY = exit_adapter.AdapterTraining(steps=2, batch_size=2, learning_rate=1e-3)


def _model_and_features(rows=8, seq_len=16, layers=(1, 2)):
  cfg = dataclasses.replace(LLAMA_CONFIGS["tiny"], num_layers=4)
  model = LlamaLM(cfg, rngs=nnx.Rngs(0))
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (rows, seq_len))
  lengths = np.full(rows, seq_len, np.int32)
  feats = dynamax_train.exit_features(
    model, tokens, lengths, layers, progress=False
  )
  return model, tokens, feats


def test_adapters_of_another_backbone_are_refused(tmp_path):
  model, tokens, feats = _model_and_features()
  one = exit_adapter.one_exit(feats, 1)
  tied = exit_adapter.fingerprint(model, tokens)
  exit_adapter.train_exit_adapter(model, one, 2, TINY, tmp_path, tied)
  other = dict(tied, backbone="another backbone's weights")
  with pytest.raises(FingerprintMismatch, match="backbone"):
    exit_adapter.train_exit_adapter(model, one, 2, TINY, tmp_path, other)


def test_fingerprint_changes_with_any_weight():
  model, tokens, _ = _model_and_features()
  before = exit_adapter.fingerprint(model, tokens)
  table = model.embed_tokens.embedding
  table.value = table.value.at[0, 0].add(1e-3)
  after = exit_adapter.fingerprint(model, tokens)
  assert after["backbone"] != before["backbone"]
  assert after["tokens"] == before["tokens"]


def test_features_of_several_exits_are_refused(tmp_path):
  model, tokens, feats = _model_and_features()
  with pytest.raises(ValueError, match="one_exit"):
    exit_adapter.train_exit_adapter(
      model, feats, 2, TINY, tmp_path, exit_adapter.fingerprint(model, tokens)
    )


def test_bad_training_settings_are_named():
  with pytest.raises(ValueError, match="steps"):
    exit_adapter.AdapterTraining(steps=0)
  with pytest.raises(ValueError, match="learning_rate"):
    exit_adapter.AdapterTraining(learning_rate=0.0)
