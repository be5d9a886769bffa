"""Issue 21 at the API boundary: token ids, max_position, eos_id, empty
batches (policy: `jaxexit.checks`, `jaxexit.decoding.inputs`,
`jaxexit.execution.modes`).

Every case asserts the documented ValueError and that its message names the
bad value. Models are tiny random inits built once; refusals happen before
anything compiles.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxexit import execution
from jaxexit.decoding import inputs
from jaxexit.decoding.config import DecodeConfig
from jaxexit.decoding.engine import generate
from jaxexit.decoding.exit_heads import LMHeadExits
from jaxexit.decoding.full import generate_full
from jaxexit.exits import rules
from jaxexit.models.albert import AlbertConfig, AlbertEncoder
from jaxexit.models.bert import BertConfig, BertEncoder
from jaxexit.models.llama import LlamaConfig, LlamaLM
from jaxexit.models.llava import LLAVA_CONFIGS, LlavaLM
from jaxexit.models.mamba import MambaConfig, MambaLM
from jaxexit.models.mamba2 import MAMBA2_CONFIGS, Mamba2LM
from jaxexit.nn.encoder import EncoderConfig, ExitEncoder
from tests.jaxexit.execution import toy_stack
from tests.tiers import fast_only, slow

V = 32
MAX_POSITION = 16


@functools.cache  # Built once: no test mutates a model.
def _llama():
  return LlamaLM(
    LlamaConfig(
      vocab_size=V,
      d_model=16,
      num_layers=2,
      num_heads=4,
      num_kv_heads=2,
      mlp_hidden=32,
      max_position=MAX_POSITION,
    ),
    rngs=nnx.Rngs(0),
  )


@functools.cache
def _mamba():
  return MambaLM(
    MambaConfig(vocab_size=V, d_model=16, num_layers=2, d_state=4),
    rngs=nnx.Rngs(0),
  )


BACKBONES = {"llama": _llama, "mamba": _mamba}
# The fast tier builds the tiny llama (and bert); mamba, mamba2, albert,
# llava and the exit encoder take ~2-6 s each to build and call eagerly on
# 2 cores, so their checks run in the heavy tier.
FAST_KINDS = fast_only(BACKBONES, "llama")


def _prompts():
  """[2, 6] right-padded prompts (longest 6) and their lengths."""
  prompts = np.array([[3, 7, 1, 9, 4, 2], [5, 8, 2, 0, 0, 0]], np.int32)
  return prompts, np.array([6, 3], np.int32)


def _decode(entry, model, prompts, lengths, *, max_new_tokens=4, eos_id=None):
  """One of the two decoding entry points with the same settings."""
  if entry == "generate":
    cfg = DecodeConfig(
      exit_layers=(1,), max_new_tokens=max_new_tokens, eos_id=eos_id
    )
    return generate(model, LMHeadExits(), prompts, lengths, 0.5, cfg)
  return generate_full(
    model, prompts, lengths, max_new_tokens=max_new_tokens, eos_id=eos_id
  )


ENTRIES = ("generate", "generate_full")


# 1. Prompt ids outside the vocabulary.


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("kind", FAST_KINDS)
@pytest.mark.parametrize("bad", [V, 10**6, -1])
def test_decoding_refuses_prompt_ids_outside_vocab(entry, kind, bad):
  prompts, lengths = _prompts()
  prompts[1, 2] = bad
  msg = (
    f"prompts must lie in [0, {V}) (the vocabulary); found 1 id(s) "
    f"outside, first {bad} at index (1, 2)"
  )
  with pytest.raises(ValueError, match=re.escape(msg)):
    _decode(entry, BACKBONES[kind](), prompts, lengths)


# 2. Prompt + max_new_tokens past the model's max_position.


@pytest.mark.parametrize("entry", ENTRIES)
def test_decoding_refuses_sequence_past_max_position(entry):
  prompts, lengths = _prompts()  # longest prompt: 6 tokens
  n = MAX_POSITION - 6 + 1
  msg = (
    f"prompt length 6 (the longest row) + max_new_tokens={n} = "
    f"{6 + n} positions exceeds the model's max_position="
    f"{MAX_POSITION}"
  )
  with pytest.raises(ValueError, match=re.escape(msg)):
    _decode(entry, _llama(), prompts, lengths, max_new_tokens=n)


def test_generate_full_accepts_sequence_of_exactly_max_position():
  prompts, lengths = _prompts()
  out = generate_full(
    _llama(), prompts, lengths, max_new_tokens=MAX_POSITION - 6
  )
  assert out.shape == (2, MAX_POSITION - 6)


@slow
def test_ssm_backbone_has_no_position_limit():
  model = _mamba()
  prompts, lengths = _prompts()
  assert model.max_position is None
  assert (
    inputs.check_inputs(
      model, prompts, lengths, max_new_tokens=10**6, eos_id=None
    )
    == 6 + 10**6 - 1
  )


# 3. eos_id outside the vocabulary.


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("kind", FAST_KINDS)
def test_decoding_refuses_eos_id_outside_vocab(entry, kind):
  prompts, lengths = _prompts()
  msg = f"eos_id={V} is outside the vocabulary [0, vocab_size={V})"
  with pytest.raises(ValueError, match=re.escape(msg)):
    _decode(entry, BACKBONES[kind](), prompts, lengths, eos_id=V)


@slow
def test_generate_full_refuses_negative_eos_id():
  prompts, lengths = _prompts()
  with pytest.raises(
    ValueError, match=re.escape("eos_id must be an integer >= 0; got eos_id=-1")
  ):
    generate_full(_mamba(), prompts, lengths, max_new_tokens=4, eos_id=-1)


# 4. Every model family checks concrete token ids against its vocabulary.


def _llava_merge(model, tokens):
  """`LlavaLM.merge`, the step of `__call__` that reads the ids (the CLIP
  forward before it is skipped: zero image embeddings)."""
  n = model.cfg.num_image_tokens
  tokens = jnp.concatenate(
    [
      jnp.full((tokens.shape[0], n), model.cfg.image_token_id, jnp.int32),
      tokens,
    ],
    axis=1,
  )
  return model.merge(
    tokens, jnp.zeros((tokens.shape[0], n, model.cfg.text.d_model))
  )


FAMILIES = {
  # name: (build, call(model, tokens), vocab, argument name, index offset)
  "llama": (_llama, lambda m, t: m(t), V, "tokens", 0),
  "mamba": (_mamba, lambda m, t: m(t), V, "tokens", 0),
  "mamba2": (
    lambda: Mamba2LM(MAMBA2_CONFIGS["tiny"], rngs=nnx.Rngs(0)),
    lambda m, t: m(t),
    MAMBA2_CONFIGS["tiny"].vocab_size,
    "tokens",
    0,
  ),
  "bert": (
    lambda: BertEncoder(
      BertConfig(
        vocab_size=V,
        hidden_size=16,
        num_layers=1,
        num_heads=4,
        intermediate_size=32,
        max_position_embeddings=16,
      ),
      rngs=nnx.Rngs(0),
    ),
    lambda m, t: m(t),
    V,
    "input_ids",
    0,
  ),
  "albert": (
    lambda: AlbertEncoder(
      AlbertConfig(
        vocab_size=V,
        embedding_size=8,
        hidden_size=16,
        num_layers=1,
        num_heads=4,
        intermediate_size=32,
        max_position_embeddings=16,
      ),
      rngs=nnx.Rngs(0),
    ),
    lambda m, t: m(t),
    V,
    "input_ids",
    0,
  ),
  "llava": (
    lambda: LlavaLM(LLAVA_CONFIGS["tiny"], rngs=nnx.Rngs(0)),
    _llava_merge,
    LLAVA_CONFIGS["tiny"].text.vocab_size,
    "tokens",
    LLAVA_CONFIGS["tiny"].num_image_tokens,
  ),
  "exit_encoder": (
    lambda: ExitEncoder(
      EncoderConfig(
        num_layers=1, d_model=16, num_heads=4, d_ff=32, vocab_size=V, max_len=16
      ),
      rngs=nnx.Rngs(0),
    ),
    lambda m, t: m.embed_tokens(t),
    V,
    "tokens",
    0,
  ),
}


_build = functools.cache(lambda family: FAMILIES[family][0]())


@pytest.mark.parametrize("family", fast_only(FAMILIES, "llama", "bert"))
@pytest.mark.parametrize("bad", [10**6, -1])
def test_model_refuses_concrete_ids_outside_vocab(family, bad):
  _, call, vocab, name, offset = FAMILIES[family]
  tokens = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.int32)
  tokens[1, 2] = bad
  msg = (
    f"{name} must lie in [0, {vocab}) (the vocabulary); found 1 id(s) "
    f"outside, first {bad} at index (1, {2 + offset})"
  )
  with pytest.raises(ValueError, match=re.escape(msg)):
    call(_build(family), jnp.asarray(tokens))


@pytest.mark.parametrize(
  "family", fast_only(["llama", "bert", "exit_encoder"], "bert")
)
def test_model_id_check_is_skipped_under_jit(family):
  """Traced ids are not checked (debug checks off): jit still compiles, a
  valid batch matches the eager call, a bad one does not raise."""
  call = FAMILIES[family][1]
  model = _build(family)
  jitted = nnx.jit(call)
  good = jnp.array([[1, 2, 3, 4]], jnp.int32)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
    jitted(model, good),
    call(model, good),
  )
  jitted(model, good.at[0, 1].set(10**6))


# 5. Empty batches: every execution mode and both decoding entry points.


def _mode_runners():
  return {
    **{
      f"run:{m}": lambda s, p, c, m=m: execution.run(m, s, rules.never(), p, c)
      for m in execution.MODES
    },
    **{
      f"make_runner:{m}": lambda s, p, c, m=m: execution.make_runner(
        m, s, rules.never()
      )(p, c)
      for m in execution.MODES
    },
    "full": lambda s, p, c: execution.make_full_model(s)(p, c),
    "exit_flops": lambda s, p, c: execution.exit_flops(s, p, c),
  }


@pytest.mark.parametrize("runner", list(_mode_runners()))
def test_execution_modes_refuse_empty_batch(runner):
  stack, params = toy_stack.make(3)
  carry = toy_stack.inputs(0)
  with pytest.raises(ValueError, match=re.escape("batch is empty (B = 0)")):
    _mode_runners()[runner](stack, params, carry)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("kind", FAST_KINDS)
def test_decoding_refuses_empty_batch(entry, kind):
  prompts = np.zeros((0, 4), np.int32)
  lengths = np.zeros((0,), np.int32)
  msg = "batch is empty (B = 0): prompts.shape=(0, 4)"
  with pytest.raises(ValueError, match=re.escape(msg)):
    _decode(entry, BACKBONES[kind](), prompts, lengths)
