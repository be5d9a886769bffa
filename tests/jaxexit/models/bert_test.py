import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxexit.execution.adapter import functional
from jaxexit.models import BertConfig, BertEncoder, from_pretrained, mean_pool
from tests.jaxexit.models import hf_tiny, modes_check
from tests.tiers import fast_only, slow

TINY = BertConfig(
  vocab_size=100,
  hidden_size=32,
  num_layers=3,
  num_heads=4,
  intermediate_size=64,
  max_position_embeddings=40,
)


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
@pytest.mark.parametrize(
  "fmt", fast_only(["safetensors", "bin"], "safetensors")
)
def test_matches_transformers_every_layer(model_type, fmt, tmp_path):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  hf = hf_tiny.build(model_type)
  folder = hf_tiny.save(hf, str(tmp_path / fmt), fmt)
  ours = from_pretrained(folder)
  assert ours.cfg.model_type == model_type
  pad = hf.config.pad_token_id
  ids, mask, types = hf_tiny.inputs(pad)
  types = types if model_type == "bert" else None
  hs_t, pooled_t = hf_tiny.torch_forward(hf, ids, mask, types)
  hs_j, pooled_j = hf_tiny.jax_forward(ours, ids, mask, types)
  assert hs_j.shape == hs_t.shape == (4, 3, 12, 32)
  for layer in range(hs_t.shape[0]):
    np.testing.assert_allclose(
      hs_j[layer],
      hs_t[layer],
      rtol=1e-5,
      atol=1e-5,
      err_msg=f"hidden state {layer}",
    )
  np.testing.assert_allclose(pooled_j, pooled_t, rtol=1e-5, atol=1e-5)


def test_roberta_positions_skip_padding():
  cfg = dataclasses.replace(
    TINY, model_type="roberta", pad_token_id=1, type_vocab_size=1
  )
  model = BertEncoder(cfg, rngs=nnx.Rngs(0))
  ids = jnp.array([[5, 6, 7, 1, 1], [1, 5, 6, 1, 7]])
  np.testing.assert_array_equal(
    model.position_ids(ids), [[2, 3, 4, 1, 1], [1, 2, 3, 1, 4]]
  )
  bert = BertEncoder(TINY, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(bert.position_ids(ids)[1], np.arange(5))


@slow
def test_execution_modes_agree():
  model = BertEncoder(TINY, rngs=nnx.Rngs(0))
  ids, mask, _ = hf_tiny.inputs(0, batch=3)
  ids = np.tile(ids, (3, 1))
  ids[3:] = np.random.default_rng(1).integers(2, 100, ids[3:].shape)
  mask = np.tile(mask, (3, 1))
  modes_check.assert_modes_agree(model, ids, mask)


@slow
def test_backbone_matches_call_and_jits():
  model = BertEncoder(TINY, rngs=nnx.Rngs(0))
  ids, mask, types = hf_tiny.inputs(0)
  j = lambda x: jnp.asarray(x, jnp.int32)
  hs, pooled = model(j(ids), j(types), j(mask))
  layer_fn, params = functional(model.exit_layers())
  num_layers = layer_fn.num_layers
  carry = model.embed(j(ids), j(types), j(mask))
  jitted = jax.jit(layer_fn)
  for layer in range(num_layers):
    carry = (layer_fn if layer % 2 else jitted)(params, layer, carry)
    np.testing.assert_allclose(carry["h"], hs[layer + 1], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    model.pool(carry["h"]), pooled, rtol=1e-5, atol=1e-6
  )
  hs_jit, _ = nnx.jit(lambda m, *a: m(*a))(model, j(ids), j(types), j(mask))
  np.testing.assert_allclose(hs_jit, hs, rtol=1e-5, atol=1e-5)


def test_padding_does_not_change_real_tokens():
  model = BertEncoder(TINY, rngs=nnx.Rngs(0))
  ids, mask, _ = hf_tiny.inputs(0)
  j = lambda x: jnp.asarray(x, jnp.int32)
  hs, _ = model(j(ids), None, j(mask))
  longer = np.pad(ids, ((0, 0), (0, 4)))
  longer_mask = np.pad(mask, ((0, 0), (0, 4)))
  hs2, _ = model(j(longer), None, j(longer_mask))
  m = mask.astype(bool)
  np.testing.assert_allclose(
    hs2[:, :, :12][:, m], hs[:, m], rtol=1e-5, atol=1e-5
  )
  np.testing.assert_allclose(
    mean_pool(hs2[-1], j(longer_mask) > 0),
    mean_pool(hs[-1], j(mask) > 0),
    atol=1e-5,
  )


@pytest.mark.parametrize(
  "bad, match",
  [
    (dict(hidden_size=30), "hidden_size=30 must be divisible by num_heads=4"),
    (dict(num_layers=0), "num_layers"),
    (dict(hidden_act="gelu_fast2"), "hidden_act"),
    (dict(model_type="gpt2"), "model_type"),
    (dict(layer_norm_eps=0.0), "layer_norm_eps"),
  ],
)
def test_bad_config(bad, match):
  with pytest.raises(ValueError, match=match):
    dataclasses.replace(TINY, **bad)


def test_from_hf_config():
  hf = {
    "model_type": "roberta",
    "vocab_size": 50265,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "hidden_act": "gelu",
  }
  cfg = BertConfig.from_hf_config(hf)
  assert (
    cfg.model_type,
    cfg.pad_token_id,
    cfg.layer_norm_eps,
    cfg.max_position_embeddings,
  ) == ("roberta", 1, 1e-5, 514)
  with pytest.raises(ValueError, match="position_embedding_type"):
    BertConfig.from_hf_config({**hf, "position_embedding_type": "relative_key"})
  with pytest.raises(ValueError, match="num_attention_heads|divisible"):
    BertConfig.from_hf_config({**hf, "num_attention_heads": 7})


def test_too_long_input_raises():
  model = BertEncoder(TINY, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="max_position_embeddings"):
    model.embed(jnp.ones((1, 41), jnp.int32))
