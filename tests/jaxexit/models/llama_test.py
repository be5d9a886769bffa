"""LlamaLM: parity with transformers, the KV-cache contract, config checks."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import jaxtyping
import numpy as np
import pytest
from flax import nnx

from jaxexit.decoding.backbone import DecoderBackbone
from jaxexit.models.llama import LlamaConfig, LlamaLM
from jaxexit.models.llama_attention import KVCache, Llama3RopeScaling
from jaxexit.models.llama_weights import LLAMA_CONFIGS, load_llama_state_dict
from tests.tiers import fast_only, slow

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TOL = dict(rtol=1e-5, atol=1e-5)
TINY = LLAMA_CONFIGS["tiny"]

# name -> (model_type, HF config kwargs). Every case has rope_theta != 1e4
# except mistral, so a dropped theta shows; sliding_window=4 < T.
CASES = {
  "llama_gqa_untied": ("llama", dict(num_key_value_heads=2, rope_theta=500.0)),
  "llama_mha_tied": (
    "llama",
    dict(num_key_value_heads=4, tie_word_embeddings=True, rope_theta=2000.0),
  ),
  "mistral_window": ("mistral", dict(num_key_value_heads=2, sliding_window=4)),
  "llama3_rope": (
    "llama",
    dict(
      num_key_value_heads=1,
      rope_parameters=dict(
        rope_type="llama3",
        rope_theta=10000.0,
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=64,
      ),
    ),
  ),
}


def hf_model(case: str):
  """A seeded random HF causal LM with every tensor perturbed (HF sets the
  RMSNorm weights to 1, which would hide a swapped norm)."""
  torch = pytest.importorskip("torch")
  tf = pytest.importorskip("transformers")
  model_type, kw = CASES[case]
  torch.manual_seed(0)
  sizes = dict(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    attn_implementation="eager",
    **kw,
  )
  if model_type == "llama":
    model = tf.LlamaForCausalLM(tf.LlamaConfig(**sizes))
  else:
    model = tf.MistralForCausalLM(tf.MistralConfig(**sizes))
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model.eval()


def ours_from(hf) -> LlamaLM:
  model = LlamaLM(LlamaConfig.from_hf(hf.config.to_dict()), rngs=nnx.Rngs(0))
  load_llama_state_dict(
    model, {k: v.numpy() for k, v in hf.state_dict().items()}
  )
  return model


def hf_forward(hf, ids, mask=None):
  import torch

  with torch.no_grad():
    out = hf(
      torch.as_tensor(np.asarray(ids)),
      attention_mask=None if mask is None else torch.as_tensor(mask),
      output_hidden_states=True,
    )
  return out.logits.numpy(), [h.numpy() for h in out.hidden_states]


def token_ids(b: int, t: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 100, (b, t)).astype(np.int32)


@pytest.mark.parametrize(
  "case", fast_only(CASES, "llama_mha_tied", "mistral_window")
)
def test_prefill_matches_transformers(case):
  hf = hf_model(case)
  ours = ours_from(hf)
  assert isinstance(ours, DecoderBackbone)
  assert ours.cfg.tie_embeddings == case.endswith("_tied")
  ids = token_ids(2, 12)
  logits, hidden = hf_forward(hf, ids)
  out = jax.jit(ours.__call__)(jnp.asarray(ids))
  assert out.logits.dtype == jnp.float32
  assert len(out.hidden_states) == len(hidden) == 4
  np.testing.assert_allclose(out.logits, logits, **TOL)
  for i, (a, b) in enumerate(zip(out.hidden_states, hidden)):
    np.testing.assert_allclose(a, b, err_msg=f"hidden state {i}", **TOL)


def _decode_fn(model: LlamaLM):
  """Jitted (tokens, caches, positions, valid) -> (logits, caches), through
  split/merge as the engine calls the backbone."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, tokens, caches, positions, valid):
    m = nnx.merge(graphdef, state)
    h, new = m.embed(tokens), []
    for i in range(m.num_layers):
      h, c = m.layer(i, h, caches[i], positions, valid)
      new.append(c)
    return m.lm_head(m.final_norm(h)), tuple(new)

  return lambda *args: run(state, *args)


@slow
@pytest.mark.parametrize("case", ["llama_gqa_untied", "mistral_window"])
def test_cached_decode_matches_full_forward(case):
  hf = hf_model(case)
  assert_cached_decode_matches(ours_from(hf), hf)


def assert_cached_decode_matches(ours, hf):
  """A 5-token prefill then 6 one-token steps through the cache equal the
  HF model's full forward (float32, TOL)."""
  ids = token_ids(2, 11, seed=1)
  ref, _ = hf_forward(hf, ids)
  step = _decode_fn(ours)
  caches = ours.init_cache(2, 16)
  pos = jnp.broadcast_to(jnp.arange(5, dtype=jnp.int32), (2, 5))
  logits, caches = step(
    jnp.asarray(ids[:, :5]), caches, pos, jnp.ones((2, 5), bool)
  )
  np.testing.assert_allclose(logits, ref[:, :5], **TOL)
  one = jnp.ones((2, 1), bool)
  for p in range(5, 11):
    logits, caches = step(
      jnp.asarray(ids[:, p : p + 1]),
      caches,
      jnp.full((2, 1), p, jnp.int32),
      one,
    )
    np.testing.assert_allclose(
      logits[:, 0], ref[:, p], err_msg=f"step {p}", **TOL
    )


@slow
def test_right_padding_matches_row_alone():
  hf = hf_model("llama_gqa_untied")
  ours = ours_from(hf)
  ids = token_ids(2, 12, seed=2)
  valid = np.arange(12)[None] < np.array([[12], [7]])
  run = jax.jit(lambda ids, valid=None: ours(ids, valid).logits)
  padded = run(jnp.asarray(ids), jnp.asarray(valid))
  alone = run(jnp.asarray(ids[1:, :7]))
  ref, _ = hf_forward(hf, ids[1:, :7])
  np.testing.assert_allclose(padded[1, :7], alone[0], **TOL)
  np.testing.assert_allclose(padded[1, :7], ref[0], **TOL)
  np.testing.assert_allclose(padded[0], run(jnp.asarray(ids[:1]))[0], **TOL)


class Jitted:
  """`LlamaLM`'s cache methods under `jax.jit` (static layer index): one
  compile per shape instead of one per op, ~10x faster on CPU."""

  def __init__(self, model: LlamaLM):
    self.init_cache = model.init_cache
    self.layer = jax.jit(model.layer, static_argnums=0)
    self.propagate = jax.jit(model.propagate, static_argnums=0)
    self.freeze = jax.jit(model.freeze, static_argnums=0)


@pytest.fixture(scope="module")
def tiny() -> Jitted:
  return Jitted(LlamaLM(TINY, rngs=nnx.Rngs(0)))


def _random_h(key: int, b: int, t: int) -> jax.Array:
  return jax.random.normal(jax.random.key(key), (b, t, TINY.d_model))


def test_propagate_writes_what_layer_writes(tiny):
  model = tiny
  h = _random_h(0, 2, 5)
  pos = jnp.array([[0, 1, 2, 3, 4], [3, 7, 1, 8, 2]], jnp.int32)
  valid = jnp.array([[True] * 5, [True, False, True, True, False]])
  fresh = model.init_cache(2, 10)[1]
  _, by_layer = model.layer(1, h, fresh, pos, valid)
  by_propagate = model.propagate(1, h, fresh, pos, valid)
  for a, b in zip(by_layer, by_propagate):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(
    by_layer.valid[1], np.isin(np.arange(10), [3, 1, 8])
  )


def test_invalid_rows_leave_cache_untouched(tiny):
  model = tiny
  h = _random_h(1, 1, 3)
  full = model.init_cache(1, 6)[0]
  _, full = model.layer(
    0, h, full, jnp.array([[0, 1, 2]], jnp.int32), jnp.ones((1, 3), bool)
  )
  h2 = _random_h(2, 1, 3)
  _, same = model.layer(
    0, h2, full, jnp.array([[0, 1, 5]], jnp.int32), jnp.zeros((1, 3), bool)
  )
  for a, b in zip(same, full):
    np.testing.assert_array_equal(a, b)
  # A valid and an invalid row aimed at one slot: the valid one wins.
  pos = jnp.array([[4, 4]], jnp.int32)
  _, mixed = model.layer(0, h2[:, :2], full, pos, jnp.array([[False, True]]))
  _, only = model.layer(0, h2[:, 1:2], full, pos[:, :1], jnp.ones((1, 1), bool))
  # Projections of 2 vs 1 tokens round differently (~1e-8).
  np.testing.assert_allclose(mixed.k, only.k, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(mixed.valid, only.valid)


@slow
def test_freeze_equals_attention_without_that_key(tiny):
  model = tiny
  h, q = _random_h(3, 1, 6), _random_h(4, 1, 1)
  pos = jnp.arange(6, dtype=jnp.int32)[None]
  fresh = model.init_cache(1, 8)[0]
  _, cache = model.layer(0, h, fresh, pos, jnp.ones((1, 6), bool))
  frozen = model.freeze(
    0, cache, jnp.array([[2, 5]], jnp.int32), jnp.array([[True, False]])
  )
  np.testing.assert_array_equal(frozen.k, cache.k)
  np.testing.assert_array_equal(
    frozen.valid[0, :6], [True, True, False, True, True, True]
  )
  _, never = model.layer(0, h, fresh, pos, pos != 2)
  at6 = jnp.array([[6]], jnp.int32)
  one = jnp.ones((1, 1), bool)
  out_frozen, _ = model.layer(0, q, frozen, at6, one)
  out_never, _ = model.layer(0, q, never, at6, one)
  out_full, _ = model.layer(0, q, cache, at6, one)
  np.testing.assert_allclose(out_frozen, out_never, rtol=1e-6, atol=1e-6)
  assert np.abs(np.asarray(out_frozen - out_full)).max() > 1e-4


def test_init_cache_shapes_and_errors(tiny):
  model = tiny
  caches = model.init_cache(3, 7)
  assert len(caches) == TINY.num_layers and isinstance(caches[0], KVCache)
  assert caches[0].k.shape == (3, 7, 2, 8)
  assert caches[0].valid.shape == (3, 7) and not caches[0].valid.any()
  with pytest.raises(ValueError, match="max_len"):
    model.init_cache(1, 0)


def test_call_input_errors():
  model = LlamaLM(dataclasses.replace(TINY, max_position=8), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="max_position=8"):
    model(jnp.zeros((1, 9), jnp.int32))
  # jaxtyping's hook (tests only) catches the mismatch first.
  with pytest.raises((ValueError, jaxtyping.TypeCheckError)):
    model(jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 3), bool))


@pytest.mark.parametrize(
  "bad, match",
  [
    (dict(num_kv_heads=3), "num_heads=4 must be divisible by num_kv_heads=3"),
    (dict(d_model=0), "d_model"),
    (
      dict(d_model=30, head_dim=None),
      "d_model=30 must be divisible by num_heads=4",
    ),
    (dict(head_dim=7), "head_dim=7"),
    (dict(sliding_window=0), "sliding_window"),
    (dict(rms_norm_eps=0.0), "rms_norm_eps"),
  ],
)
def test_config_errors(bad, match):
  with pytest.raises(ValueError, match=match):
    dataclasses.replace(TINY, **bad)


def test_rope_scaling_must_be_the_dataclass():
  with pytest.raises(
    (ValueError, jaxtyping.TypeCheckError), match="rope_scaling"
  ):
    dataclasses.replace(TINY, rope_scaling={"factor": 8.0})


def test_rope_scaling_errors():
  with pytest.raises(ValueError, match="high_freq_factor"):
    Llama3RopeScaling(
      factor=8.0,
      low_freq_factor=4.0,
      high_freq_factor=1.0,
      original_max_position=64,
    )


HF_TINY = dict(
  model_type="llama",
  vocab_size=100,
  hidden_size=32,
  num_hidden_layers=2,
  num_attention_heads=4,
  intermediate_size=64,
)


@pytest.mark.parametrize(
  "extra, match",
  [
    (dict(model_type="gpt2"), "model_type='gpt2'"),
    (dict(hidden_act="gelu"), "hidden_act='gelu'"),
    (dict(attention_bias=True), "attention_bias"),
    (dict(rope_scaling=dict(rope_type="yarn", factor=4.0)), "'yarn'"),
    (
      dict(
        rope_parameters=dict(
          rope_type="default", rope_theta=1e4, partial_rotary_factor=0.5
        )
      ),
      "partial_rotary_factor",
    ),
  ],
)
def test_from_hf_errors(extra, match):
  with pytest.raises(ValueError, match=match):
    LlamaConfig.from_hf({**HF_TINY, **extra})


def test_from_hf_defaults_and_overrides():
  cfg = LlamaConfig.from_hf(HF_TINY, dtype=jnp.bfloat16)
  assert (cfg.num_kv_heads, cfg.head_dim, cfg.rope_theta) == (4, 8, 1e4)
  assert cfg.sliding_window is None and not cfg.tie_embeddings
  assert cfg.dtype == jnp.bfloat16
