"""Mamba-2: parity with HF `Mamba2ForCausalLM`, chunked SSD, masking."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxexit.decoding.backbone import DecoderBackbone
from jaxexit.models.mamba import MAMBA_CONFIGS
from jaxexit.models.mamba2 import (
  MAMBA2_CONFIGS,
  Mamba2Config,
  Mamba2LM,
  ssd_chunked,
  ssd_step,
)
from jaxexit.models.mamba_weights import load_mamba2_state_dict
from tests.jaxexit.models.mamba_test import (
  MASKS,
  check_bad_inputs,
  check_functional_jit,
  check_hf_parity,
  check_masked_noop,
  check_parallel_matches_sequential,
  check_prefill_then_decode,
  check_right_padding,
  load_from_hf,
  perturbed,
)
from tests.tiers import heavy

TINY = MAMBA2_CONFIGS["tiny"]
# chunk_size 4 with T = 10: two full chunks and a zero-padded one in HF's
# torch path and here. The Δ limit binds for some steps, so the clamp (HF:
# prefill path only) is exercised.
HF_SIZES = dict(
  vocab_size=64,
  hidden_size=32,
  state_size=8,
  num_hidden_layers=2,
  expand=2,
  conv_kernel=4,
  num_heads=8,
  head_dim=8,
  n_groups=2,
  chunk_size=4,
  time_step_limit=(0.01, 0.5),
)


@pytest.fixture(scope="module")
def pair():
  """(our Mamba2LM, the HF model it was loaded from)."""
  pytest.importorskip("torch")
  tf = pytest.importorskip("transformers")
  import torch

  torch.manual_seed(0)
  hf = perturbed(tf.Mamba2ForCausalLM(tf.Mamba2Config(**HF_SIZES)))
  cfg = Mamba2Config.from_hf(hf.config.to_dict())
  assert cfg == dataclasses.replace(TINY, dt_limit=(0.01, 0.5))
  return load_from_hf(Mamba2LM, cfg, hf, load_mamba2_state_dict), hf


def test_hf_parity_and_decode(pair):
  model, hf = pair
  assert isinstance(model, DecoderBackbone)
  logits = check_hf_parity(model, hf)
  check_prefill_then_decode(model, logits)


@heavy
def test_right_padding(pair):
  check_right_padding(*pair)


@heavy
def test_masked_step_is_noop(pair):
  check_masked_noop(pair[0])


@heavy  # Mamba-1's twin stays in the fast tier
@pytest.mark.parametrize("mask", MASKS.values(), ids=MASKS.keys())
def test_parallel_matches_sequential(pair, mask):
  check_parallel_matches_sequential(pair[0], mask)


def test_bad_inputs(pair):
  check_bad_inputs(pair[0])


@heavy
@pytest.mark.parametrize("chunk", [1, 3, 4, 16])
def test_ssd_chunks_match_recurrence(chunk):
  """Any chunk size (incl. padded last chunks) == the step recurrence, with
  an initial state carried in and masked steps in the middle."""
  b, t, h, k, g, s = 2, 9, 4, 3, 2, 5
  keys = jax.random.split(jax.random.key(0), 6)
  x = jax.random.normal(keys[0], (b, t, h, k))
  dt = jax.nn.softplus(jax.random.normal(keys[1], (b, t, h)))
  valid = jax.random.bernoulli(keys[2], 0.7, (b, t))
  dt = jnp.where(valid[..., None], dt, 0.0)
  a = -jnp.arange(1.0, h + 1)
  bc = jax.random.normal(keys[3], (2, b, t, g, s))
  h0 = jax.random.normal(keys[4], (b, h, k, s))

  @jax.jit
  def both(x, dt, bc, h0):
    y, last = ssd_chunked(x, dt, a, bc[0], bc[1], h0, chunk)

    def body(state, xs):
      x_t, dt_t, b_t, c_t, v_t = xs
      y_t, state = ssd_step(x_t, dt_t, a, b_t, c_t, state, v_t)
      return state, y_t

    ref_last, ref = jax.lax.scan(
      body, h0, tuple(v.swapaxes(0, 1) for v in (x, dt, bc[0], bc[1], valid))
    )
    return y, last, ref.swapaxes(0, 1), ref_last

  y, last, ref, ref_last = both(x, dt, bc, h0)
  np.testing.assert_allclose(y, ref, atol=1e-5, rtol=0)
  np.testing.assert_allclose(last, ref_last, atol=1e-5, rtol=0)


@heavy
def test_random_init_and_functional_jit():
  model = Mamba2LM(TINY, rngs=nnx.Rngs(0))
  mixer = model.layers.mixer
  np.testing.assert_allclose(
    mixer.A_log[...][0], np.log(np.arange(1, 9)), rtol=1e-6
  )
  np.testing.assert_array_equal(mixer.D[...], 1.0)
  dt = jax.nn.softplus(mixer.dt_bias[...])
  assert dt.min() >= TINY.dt_min * 0.999 and dt.max() <= TINY.dt_max * 1.001
  check_functional_jit(model)


def test_codestral_config():
  cfg = MAMBA2_CONFIGS["codestral-mamba-7b"]
  assert (cfg.d_inner, cfg.conv_dim, cfg.num_heads * cfg.head_dim) == (
    8192,
    8192 + 2 * 8 * 128,
    8192,
  )
  model = nnx.eval_shape(lambda: Mamba2LM(cfg, rngs=nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  assert sum(math.prod(p.shape) for p in jax.tree.leaves(params)) == (
    7_285_403_648
  )
  assert model.cache_shapes(2) == ((2, 10240, 3), (2, 128, 64, 128))
  # Trace a block at paper size: decode and a 300-token prefill (two SSD
  # chunks of 256, the second zero-padded), shapes only.
  graphdef, state = nnx.split(model)
  cache = jax.eval_shape(lambda: model.init_layer_cache(2))

  def layer(state, h, cache, valid):
    return nnx.merge(graphdef, state).layer(
      63, h, cache, jnp.zeros(valid.shape, jnp.int32), valid
    )

  for t in (1, 300):
    out, new = jax.eval_shape(
      layer,
      state,
      jax.ShapeDtypeStruct((2, t, 4096), jnp.float32),
      cache,
      jax.ShapeDtypeStruct((2, t), bool),
    )
    assert out.shape == (2, t, 4096)
    assert jax.tree.map(lambda x: x.shape, new) == model.cache_shapes(2)


@pytest.mark.parametrize(
  "kw,match",
  [
    (dict(expand=3), "num_heads \\* head_dim"),
    (dict(n_groups=3), "n_groups=3"),
    (dict(dt_limit=(0.5, 0.1)), "dt_limit"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(layer_norm_eps=-1.0), "layer_norm_eps"),
  ],
)
def test_config_errors(kw, match):
  with pytest.raises(ValueError, match=match):
    dataclasses.replace(TINY, **kw)


def test_from_hf():
  hf = {
    "model_type": "mamba2",
    "vocab_size": 64,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_heads": 8,
    "head_dim": 8,
    "state_size": 8,
    "n_groups": 2,
    "time_step_limit": [0.0, math.inf],
  }
  cfg = Mamba2Config.from_hf(hf, chunk_size=4)
  assert cfg == TINY
  with pytest.raises(ValueError, match="norm_before_gate=True"):
    Mamba2Config.from_hf({**hf, "norm_before_gate": True})
  with pytest.raises(ValueError, match="needs a Mamba2Config"):
    Mamba2LM(MAMBA_CONFIGS["tiny"], rngs=nnx.Rngs(0))
