import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxexit.execution.adapter import functional
from jaxexit.models import AlbertConfig, AlbertEncoder, from_pretrained
from tests.jaxexit.models import hf_tiny, modes_check
from tests.tiers import fast_only, slow

TINY = AlbertConfig(
  vocab_size=100,
  embedding_size=16,
  hidden_size=32,
  num_layers=4,
  num_heads=4,
  intermediate_size=64,
  max_position_embeddings=40,
)


@pytest.mark.parametrize(
  "fmt", fast_only(["safetensors", "bin"], "safetensors")
)
def test_matches_transformers_every_layer(fmt, tmp_path):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  hf = hf_tiny.build("albert", num_layers=4)
  assert hf.config.hidden_act == "gelu_new"
  folder = hf_tiny.save(hf, str(tmp_path / fmt), fmt)
  ours = from_pretrained(folder)
  assert isinstance(ours, AlbertEncoder)
  ids, mask, types = hf_tiny.inputs(0)
  hs_t, pooled_t = hf_tiny.torch_forward(hf, ids, mask, types)
  hs_j, pooled_j = hf_tiny.jax_forward(ours, ids, mask, types)
  assert hs_j.shape == hs_t.shape == (5, 3, 12, 32)
  for layer in range(hs_t.shape[0]):
    np.testing.assert_allclose(
      hs_j[layer],
      hs_t[layer],
      rtol=1e-5,
      atol=1e-5,
      err_msg=f"hidden state {layer}",
    )
  np.testing.assert_allclose(pooled_j, pooled_t, rtol=1e-5, atol=1e-5)


def test_one_shared_layer():
  model = AlbertEncoder(TINY, rngs=nnx.Rngs(0))
  layer_fn, params = functional(model.exit_layers())
  num_layers = layer_fn.num_layers
  assert num_layers == 4
  # One layer's weights, no L axis: [D, D] query kernel.
  assert params["query"]["kernel"].shape == (32, 32)
  n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  n_layer = sum(x.size for x in jax.tree.leaves(params))
  deeper = AlbertEncoder(
    dataclasses.replace(TINY, num_layers=12), rngs=nnx.Rngs(0)
  )
  assert (
    sum(x.size for x in jax.tree.leaves(nnx.state(deeper, nnx.Param)))
    == n_params
  )
  assert n_layer < n_params
  carry = model.embed(jnp.ones((2, 5), jnp.int32))
  a = layer_fn(params, 0, carry)
  b = jax.jit(layer_fn)(params, jnp.int32(3), carry)
  np.testing.assert_allclose(a["h"], b["h"], rtol=1e-6, atol=1e-6)


@slow
def test_execution_modes_agree():
  model = AlbertEncoder(TINY, rngs=nnx.Rngs(0))
  ids, mask, _ = hf_tiny.inputs(0)
  ids = np.tile(ids, (3, 1))
  ids[3:] = np.random.default_rng(1).integers(2, 100, ids[3:].shape)
  mask = np.tile(mask, (3, 1))
  modes_check.assert_modes_agree(model, ids, mask)


def test_call_equals_backbone_loop():
  model = AlbertEncoder(TINY, rngs=nnx.Rngs(0))
  ids, mask, types = (jnp.asarray(x, jnp.int32) for x in hf_tiny.inputs(0))
  hs, pooled = model(ids, types, mask)
  layer_fn, params = functional(model.exit_layers())
  num_layers = layer_fn.num_layers
  carry = model.embed(ids, types, mask)
  for layer in range(num_layers):
    carry = layer_fn(params, layer, carry)
  np.testing.assert_allclose(carry["h"], hs[-1], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    model.pool(carry["h"]), pooled, rtol=1e-5, atol=1e-6
  )


@pytest.mark.parametrize(
  "bad, match",
  [
    (dict(hidden_size=30), "hidden_size=30 must be divisible by num_heads=4"),
    (dict(embedding_size=0), "embedding_size"),
    (dict(num_heads=0), "num_heads"),
    (dict(hidden_act="nope"), "hidden_act"),
  ],
)
def test_bad_config(bad, match):
  with pytest.raises(ValueError, match=match):
    dataclasses.replace(TINY, **bad)


def test_from_hf_config():
  hf = {
    "model_type": "albert",
    "vocab_size": 30000,
    "embedding_size": 128,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu_new",
    "num_hidden_groups": 1,
    "inner_group_num": 1,
  }
  cfg = AlbertConfig.from_hf_config(hf)
  assert (cfg.embedding_size, cfg.hidden_act, cfg.num_layers) == (
    128,
    "gelu_new",
    12,
  )
  with pytest.raises(ValueError, match="num_hidden_groups=2"):
    AlbertConfig.from_hf_config({**hf, "num_hidden_groups": 2})
  with pytest.raises(ValueError, match="hidden_size=768 must be divisible"):
    AlbertConfig.from_hf_config({**hf, "num_attention_heads": 5})
