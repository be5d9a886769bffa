"""Plain full-depth generation: the reference every early-exit mode must match.

Prefill, then one `lax.scan` step per token through all blocks, with no exit
machinery at all. `generate` with exits disabled must reproduce it token for
token (tested for every state mode).

Axes: B batch, T prompt tokens, N generated tokens.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxexit.decoding.backbone import DecoderBackbone
from jaxexit.decoding.engine import sample
from jaxexit.decoding.inputs import cache_length, check_inputs
from jaxexit.decoding.sharded import shard_caches
from jaxtyping import ArrayLike

from jaxexit.typing import Array, Int, PRNGKeyArray


@functools.partial(
  jax.jit,
  static_argnames=("graphdef", "max_new_tokens", "temperature", "eos_id"),
)
def _generate_full(
  graphdef,
  params,
  prompts,
  lengths,
  key,
  *,
  max_new_tokens,
  temperature,
  eos_id,
):
  backbone = nnx.merge(graphdef, params)
  batch, prompt_len = prompts.shape
  layers = range(backbone.num_layers)
  caches = shard_caches(
    backbone.init_cache(batch, cache_length(prompt_len, max_new_tokens))
  )

  def forward(tokens, positions, valid, caches):
    h = backbone.embed(tokens)
    caches = list(caches)
    for i in layers:
      h, caches[i] = backbone.layer(i, h, caches[i], positions, valid)
    return backbone.lm_head(backbone.final_norm(h)), tuple(caches)

  positions = jnp.broadcast_to(jnp.arange(prompt_len), prompts.shape)
  logits, caches = forward(
    prompts, positions, positions < lengths[:, None], caches
  )
  last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)
  first = sample(last[:, 0], temperature, jax.random.fold_in(key, 0))
  eos = -1 if eos_id is None else eos_id

  def step(state, n):
    token, done, caches = state
    logits, caches = forward(
      token[:, None], (lengths + n - 1)[:, None], ~done[:, None], caches
    )
    new = sample(logits[:, 0], temperature, jax.random.fold_in(key, n))
    new = jnp.where(done, token, new)
    return (new, done | (new == eos), caches), new

  state = (first, first == eos, caches)
  _, rest = jax.lax.scan(step, state, jnp.arange(1, max_new_tokens))
  return jnp.concatenate([first[:, None], rest.T], axis=1)


def generate_full(
  backbone: DecoderBackbone,
  prompts: Int[ArrayLike, "B T"],
  lengths: Int[ArrayLike, "B"],
  *,
  max_new_tokens: int,
  temperature: float = 0.0,
  eos_id: int | None = None,
  key: PRNGKeyArray | None = None,
) -> Int[Array, "B N"]:
  """[B, N] tokens of the full model (after a row's EOS: the EOS id).

  Args:
    backbone: a `DecoderBackbone`.
    prompts: [B, T] right-padded prompt ids.
    lengths: [B] prompt lengths (≥ 1).
    max_new_tokens: N, tokens generated per row.
    temperature: 0 for greedy decoding, > 0 to sample.
    eos_id: a row stops after it emits this id (None: never).
    key: PRNG key for sampling (default `jax.random.key(0)`).

  Raises:
    ValueError: as `generate` (empty batch, prompt ids or eos_id outside
      [0, V), sequence beyond `max_position`: `jaxexit.decoding.inputs`).
  """
  check_inputs(
    backbone, prompts, lengths, max_new_tokens=max_new_tokens, eos_id=eos_id
  )
  graphdef, params = nnx.split(backbone)
  key = jax.random.key(0) if key is None else key
  return _generate_full(
    graphdef,
    params,
    jnp.asarray(prompts, jnp.int32),
    jnp.asarray(lengths, jnp.int32),
    key,
    max_new_tokens=max_new_tokens,
    temperature=float(temperature),
    eos_id=eos_id,
  )
