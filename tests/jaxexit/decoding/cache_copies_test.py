"""The decode step copies no cache: one buffer per cache, however many exits.

A segment dispatch that carried every cache through every branch (a
`lax.switch` over segments) or a fill that did the same would need a copy
of the caches per branch; XLA's memory analysis of the compiled `generate`
shows it as temporary memory growing with the number of exits.
"""

import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxexit.decoding import DecodeConfig, LMHeadExits, engine
from jaxexit.models.llama import LlamaConfig, LlamaLM

from tests.tiers import fast_only

MAX_LEN = 4000


def _compiled(mode: str, exit_layers: tuple[int, ...]):
  model = LlamaLM(
    LlamaConfig(
      vocab_size=32,
      d_model=16,
      num_layers=6,
      num_heads=4,
      num_kv_heads=2,
      mlp_hidden=32,
      max_position=MAX_LEN,
    ),
    rngs=nnx.Rngs(0),
  )
  heads = LMHeadExits()
  cfg = DecodeConfig(
    exit_layers=exit_layers, state_mode=mode, max_new_tokens=4, pending=2
  )
  graphdefs, params = zip(*(nnx.split(m) for m in (model, heads)))
  prompts = jnp.asarray([[3, 7, 1, 9]], jnp.int32)
  compiled = engine._generate.lower(
    tuple(graphdefs),
    tuple(params),
    prompts,
    jnp.asarray([4], jnp.int32),
    jnp.float32(0.5),
    jax.random.key(0),
    config=cfg,
    max_len=MAX_LEN,
  ).compile()
  cache_bytes = sum(
    x.nbytes for x in jax.tree.leaves(model.init_cache(1, MAX_LEN))
  )
  return compiled, cache_bytes


@pytest.mark.parametrize(
  "mode",
  # Every mode in CI (issue 19's no-cache-copy test).
  fast_only(
    ["propagate", "freeze", "recompute", "oracle"],
    "propagate",
    slow_too=("freeze", "recompute", "oracle"),
  ),
)
def test_no_branch_copies_a_cache(mode):
  few, cache_bytes = _compiled(mode, (3,))
  many, _ = _compiled(mode, (1, 2, 3, 4, 5))
  temp_few = few.memory_analysis().temp_size_in_bytes
  temp_many = many.memory_analysis().temp_size_in_bytes
  # Five exits instead of one: not one more cache's worth of temporaries.
  assert temp_many - temp_few < 0.1 * cache_bytes, (temp_few, temp_many)
  # The carry holds the caches once (plus activations), not once per branch.
  assert temp_many < 2 * cache_bytes, (temp_many, cache_bytes)
  # No cache-sized copy of a branch operand (a pass-through copy).
  passthrough = re.findall(
    rf"= \S*\[[^\]]*{MAX_LEN}[^\]]*\]\S* copy\(%(?:get-tuple-element|param)",
    many.as_text(),
  )
  assert not passthrough, passthrough[:3]
