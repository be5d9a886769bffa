"""LayerSkip self-speculative decoding: draft with the first E blocks,
verify with the rest in one pass, keep the longest agreeing prefix.

Spec: `llm_exits.md` §1 (mode 3, draft and verify) and §5.3 (LayerSkip).
A mode of its own beside `generate` (exits per token) and `generate_full`
(the reference it must reproduce under greedy decoding).

One round, for every unfinished row at once (static shapes):

1. Draft: the row's last emitted token and then each new draft go through
   blocks 0..E−1 one at a time (`lax.scan` over d steps), the exit head
   (default: the shared final norm + LM head, LayerSkip's early exit)
   proposes the next token; blocks < E write their KV at the draft
   positions. The d-th draft goes through blocks 0..E−1 as well, so the
   layer-E states of all d + 1 positions are known.
2. Verify: blocks E..L−1 run once on those d + 1 layer-E states (T = d + 1),
   reusing the draft's KV for blocks < E, and the final norm + LM head give
   the full model's d + 1 predictions.
3. Accept (`jaxexit.decoding.speculative`): a drafts kept, plus one token
   of the full model; EOS and `max_new_tokens` cut the round short per row.

Cropping. Each row keeps its own length n (tokens emitted); the round
writes KV at absolute positions P..P+d with P = prompt length + n − 1 (the
last emitted token's position). Rejected positions keep stale KV in the
fixed buffers, but a query at position p attends only to slots ≤ p, and
the next round writes P'..P'+d (P' ≤ P+d+1) before any query reads them,
so stale entries are never read: the caches are cropped to n by the
per-row length alone. This needs a positional KV cache (Transformers); a
recurrent (Mamba) state cannot be rolled back and is refused. A stateful
exit head is rolled back exactly: its state from the round's start is
advanced over the accepted positions only.

The whole loop is one `lax.while_loop` inside one `jit`.

Axes: B batch, T prompt tokens, N generated tokens, J = d drafts,
D width, V vocabulary.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import ArrayLike

from jaxexit import checks
from jaxexit.decoding.backbone import DecoderBackbone
from jaxexit.decoding.engine import sample
from jaxexit.decoding.exit_heads import DecoderExitHeads, LMHeadExits
from jaxexit.decoding.inputs import cache_length, check_inputs
from jaxexit.decoding.sharded import shard_caches
from jaxexit.decoding.speculative import (
  SelfSpeculativeCost,
  greedy_accept,
  sample_probs,
  speculative_accept,
)
from jaxexit.typing import Array, Int, PRNGKeyArray


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SelfSpeculativeOutput:
  """Tokens and draft/verify accounting of `generate_self_speculative`.

  Attributes:
    tokens: [B, N] int32 generated ids (after a row's EOS: the EOS id).
    lengths: [B] int32 tokens emitted per row, its EOS included.
    accepted: [B] int32 drafts accepted in total per row (before the EOS /
      `max_new_tokens` cut).
    row_rounds: [B] int32 verify passes the row took part in.
    verify_passes: [] int32 rounds of the batch loop (one verify pass each).
    draft_steps: [] int32 shallow single-token passes, (d + 1) per round.
  """

  tokens: Int[Array, "B N"]
  lengths: Int[Array, "B"]
  accepted: Int[Array, "B"]
  row_rounds: Int[Array, "B"]
  verify_passes: Int[Array, ""]
  draft_steps: Int[Array, ""]

  @property
  def acceptance_rate(self) -> float:
    """Mean accepted drafts per verify pass, over rows (in [0, d])."""
    rounds = max(int(jnp.sum(self.row_rounds)), 1)
    return float(jnp.sum(self.accepted)) / rounds


def cost_of(
  out: SelfSpeculativeOutput, num_layers: int, exit_layer: int, draft_len: int
) -> SelfSpeculativeCost:
  """The cost model at the run's measured acceptance rate."""
  return SelfSpeculativeCost(
    num_layers=num_layers,
    exit_layer=exit_layer,
    draft_len=draft_len,
    accepted=out.acceptance_rate,
  )


def _layers(backbone, caches, h, positions, valid, start, end):
  caches = list(caches)
  for i in range(start, end):
    h, caches[i] = backbone.layer(i, h, caches[i], positions, valid)
  return h, tuple(caches)


def _probs(logits, temperature):
  return jax.nn.softmax(logits / temperature, axis=-1)


def _round(backbone, head, cfg, key, lengths, state):
  """One draft + verify round of the while loop (module docstring)."""
  exit_layer, d, n_new, temperature, eos = cfg
  r, n, last, done, caches, hstate, out, acc, rounds = state
  batch = n.shape[0]
  active = ~done
  start = lengths + n - 1  # [B] position of `last`
  offsets = jnp.arange(d + 1, dtype=jnp.int32)
  positions = start[:, None] + offsets[None, :]  # [B, J+1]
  valid = jnp.broadcast_to(active[:, None], positions.shape)
  key = jax.random.fold_in(key, r)

  def shallow(token, caches, pos):
    h = backbone.embed(token[:, None])
    return _layers(
      backbone, caches, h, pos[:, None], active[:, None], 0, exit_layer
    )

  def draft(carry, j):
    token, caches, hs = carry
    pos = start + j
    h, caches = shallow(token, caches, pos)
    logits, hs = head(backbone, 0, h, hs, pos[:, None], active[:, None])
    nxt = sample(logits[:, 0], temperature, jax.random.fold_in(key, j))
    return (nxt, caches, hs), (h[:, 0], nxt, logits[:, 0])

  (xd, caches, _), (h_draft, drafts, d_logits) = jax.lax.scan(
    draft, (last, caches, hstate), jnp.arange(d, dtype=jnp.int32)
  )
  h_last, caches = shallow(xd, caches, start + d)
  h_e = jnp.concatenate([jnp.swapaxes(h_draft, 0, 1), h_last], axis=1)
  h, caches = _layers(
    backbone, caches, h_e, positions, valid, exit_layer, backbone.num_layers
  )
  full_logits = backbone.lm_head(backbone.final_norm(h))  # [B, J+1, V]
  drafts = drafts.T  # [B, J]
  if temperature == 0.0:
    accepted, nxt = greedy_accept(drafts, full_logits)
  else:
    k_u, k_next = jax.random.split(jax.random.fold_in(key, d))
    p_draft = _probs(jnp.swapaxes(d_logits, 0, 1), temperature)
    accepted, dist = speculative_accept(
      drafts,
      p_draft,
      _probs(full_logits, temperature),
      jax.random.uniform(k_u, drafts.shape),
    )
    nxt = sample_probs(dist, k_next)
  # Emitted this round: drafts[:a] then nxt, cut at EOS and at N.
  padded = jnp.concatenate([drafts, nxt[:, None]], axis=1)  # [B, J+1]
  emitted = jnp.where(
    offsets[None, :] == accepted[:, None], nxt[:, None], padded
  )
  in_round = offsets[None, :] <= accepted[:, None]
  is_eos = (emitted == eos) & in_round
  first_eos = jnp.argmax(is_eos, axis=1).astype(jnp.int32)
  count = jnp.where(jnp.any(is_eos, axis=1), first_eos + 1, accepted + 1)
  count = jnp.minimum(count, n_new - n)
  keep = (offsets[None, :] < count[:, None]) & active[:, None]  # [B, J+1]
  rows = jnp.broadcast_to(jnp.arange(batch)[:, None], keep.shape)
  slots = jnp.where(keep, n[:, None] + offsets[None, :], n_new)
  out = out.at[rows, slots].set(emitted, mode="drop")
  new_last = jnp.take_along_axis(emitted, (count - 1)[:, None], axis=1)[:, 0]
  hstate = head.advance(backbone, 0, h_e, hstate, positions, keep)
  n = jnp.where(active, n + count, n)
  stop = jnp.any(is_eos & keep, axis=1) | (n >= n_new)
  return (
    r + 1,
    n,
    jnp.where(active, new_last, last),
    done | (active & stop),
    caches,
    hstate,
    out,
    acc + jnp.where(active, accepted, 0),
    rounds + active.astype(jnp.int32),
  )


@functools.partial(
  jax.jit,
  static_argnames=(
    "graphdefs",
    "exit_layer",
    "draft_len",
    "max_new_tokens",
    "temperature",
    "eos_id",
    "max_len",
  ),
)
def _generate(
  graphdefs,
  params,
  prompts,
  lengths,
  key,
  *,
  exit_layer,
  draft_len,
  max_new_tokens,
  temperature,
  eos_id,
  max_len,
):
  backbone, head = (nnx.merge(g, p) for g, p in zip(graphdefs, params))
  batch, prompt_len = prompts.shape
  caches = shard_caches(backbone.init_cache(batch, max_len))
  hstate = head.init_state(1, batch, max_len)[0]
  positions = jnp.broadcast_to(jnp.arange(prompt_len), prompts.shape)
  valid = positions < lengths[:, None]
  h = backbone.embed(prompts)
  h, caches = _layers(backbone, caches, h, positions, valid, 0, exit_layer)
  hstate = head.advance(backbone, 0, h, hstate, positions, valid)
  h, caches = _layers(
    backbone, caches, h, positions, valid, exit_layer, backbone.num_layers
  )
  h = jnp.take_along_axis(h, (lengths - 1)[:, None, None], axis=1)
  logits = backbone.lm_head(backbone.final_norm(h))[:, 0]
  first = sample(logits, temperature, jax.random.fold_in(key, 0))
  eos = -1 if eos_id is None else eos_id
  fill = 0 if eos_id is None else eos_id
  out = jnp.full((batch, max_new_tokens), fill, jnp.int32).at[:, 0].set(first)
  n = jnp.ones((batch,), jnp.int32)
  done = (first == eos) | (n >= max_new_tokens)
  zeros = jnp.zeros((batch,), jnp.int32)
  state = (jnp.int32(0), n, first, done, caches, hstate, out, zeros, zeros)
  cfg = (exit_layer, draft_len, max_new_tokens, temperature, eos)
  body = functools.partial(
    _round, backbone, head, cfg, jax.random.fold_in(key, 1), lengths
  )
  cond = lambda state: ~jnp.all(state[3])
  r, n, _, _, _, _, out, acc, rounds = jax.lax.while_loop(cond, body, state)
  return SelfSpeculativeOutput(
    tokens=out,
    lengths=n,
    accepted=acc,
    row_rounds=rounds,
    verify_passes=r,
    draft_steps=r * (draft_len + 1),
  )


def check_self_speculative(
  backbone, head, *, exit_layer, draft_len, temperature, room
) -> None:
  """Host-side checks of the self-speculation settings (ValueError)."""
  num_layers = backbone.num_layers
  checks.positive_int("exit_layer", exit_layer)
  if exit_layer >= num_layers:
    raise ValueError(
      f"exit_layer={exit_layer} must lie in [1, L-1] = [1, {num_layers - 1}]"
      " (blocks E..L-1 verify the drafts)"
    )
  checks.positive_int("draft_len", draft_len)
  if draft_len > room:
    raise ValueError(
      f"draft_len={draft_len} exceeds the cache room of {room} positions "
      "beyond what the prompt and max_new_tokens need (pass a larger "
      "max_len or a smaller draft_len)"
    )
  checks.in_range("temperature", temperature, 0.0, float("inf"))
  cache = jax.eval_shape(lambda: backbone.init_cache(1, 2))[0]
  if not hasattr(cache, "k"):
    raise ValueError(
      f"self-speculation needs a positional KV cache to crop rejected "
      f"drafts; {type(backbone).__name__}'s cache "
      f"{type(cache).__name__} is recurrent"
    )
  h = jax.ShapeDtypeStruct((1, 1, backbone.d_model), jnp.float32)
  pos = jax.ShapeDtypeStruct((1, 1), jnp.int32)
  ok = jax.ShapeDtypeStruct((1, 1), bool)
  state = jax.eval_shape(lambda: head.init_state(1, 1, 2)[0])
  logits, _ = jax.eval_shape(
    lambda h, s, p, v: head(backbone, 0, h, s, p, v), h, state, pos, ok
  )
  if logits.shape[-1] != backbone.vocab_size:
    raise ValueError(
      f"the exit head outputs {logits.shape[-1]} logits per token but the "
      f"backbone's vocab_size={backbone.vocab_size}; drafts and the full "
      "model must share one vocabulary"
    )


def generate_self_speculative(
  backbone: DecoderBackbone,
  prompts: Int[ArrayLike, "B T"],
  lengths: Int[ArrayLike, "B"],
  *,
  exit_layer: int,
  draft_len: int,
  max_new_tokens: int,
  temperature: float = 0.0,
  eos_id: int | None = None,
  key: PRNGKeyArray | None = None,
  exit_head: DecoderExitHeads | None = None,
  max_len: int | None = None,
) -> SelfSpeculativeOutput:
  """Generates up to N tokens per row by LayerSkip self-speculation.

  Greedy (temperature 0) output equals `generate_full`'s token for token;
  with temperature > 0 the tokens follow the full model's distribution
  (speculative sampling), though not `generate_full`'s random draws.

  Args:
    backbone: a Transformer `DecoderBackbone` (positional KV cache).
    prompts: [B, T] right-padded prompt ids.
    lengths: [B] prompt lengths (≥ 1).
    exit_layer: E in [1, L−1]: drafts use blocks 0..E−1.
    draft_len: d ≥ 1 tokens drafted per round.
    max_new_tokens: N, tokens generated per row.
    temperature: 0 for greedy decoding, > 0 to sample.
    eos_id: a row stops after it emits this id (None: never).
    key: PRNG key for sampling (default `jax.random.key(0)`).
    exit_head: the draft head, a `DecoderExitHeads` called as exit 0 on the
      layer-E state (default `LMHeadExits()`: shared final norm + LM head).
    max_len: cache positions (default: T + N − 1 + d, what the last round's
      drafts need); must leave room for d positions past T + N − 1.

  Returns:
    A `SelfSpeculativeOutput` ([B, N] tokens, lengths, accept counts).

  Raises:
    ValueError: as `generate_full` (`jaxexit.decoding.inputs`), and for
      exit_layer outside [1, L−1], draft_len < 1 or beyond the cache room,
      a negative temperature, a recurrent (non-KV) cache, or an exit head
      whose vocabulary differs from the backbone's.
  """
  head = LMHeadExits() if exit_head is None else exit_head
  checks.positive_int("draft_len", draft_len)
  needed = cache_length(int(jnp.shape(prompts)[-1]), max_new_tokens)
  max_len = needed + draft_len if max_len is None else max_len
  check_inputs(
    backbone,
    prompts,
    lengths,
    max_new_tokens=max_new_tokens,
    eos_id=eos_id,
    max_len=max_len,
  )
  check_self_speculative(
    backbone,
    head,
    exit_layer=exit_layer,
    draft_len=draft_len,
    temperature=temperature,
    room=max_len - needed,
  )
  graphdefs, params = zip(*(nnx.split(m) for m in (backbone, head)))
  key = jax.random.key(0) if key is None else key
  return _generate(
    tuple(graphdefs),
    tuple(params),
    jnp.asarray(prompts, jnp.int32),
    jnp.asarray(lengths, jnp.int32),
    key,
    exit_layer=exit_layer,
    draft_len=draft_len,
    max_new_tokens=max_new_tokens,
    temperature=float(temperature),
    eos_id=eos_id,
    max_len=max_len,
  )
