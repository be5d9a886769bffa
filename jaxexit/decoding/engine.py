# Over 400 lines: 397 before ruff format; prefill and decode loop.
"""Early-exit generation with real layer skipping, for any `DecoderBackbone`.

Spec: `llm_exits.md` §1.1–1.2 (missing state, CALM's segments), §5.1–5.2
(CALM, EE-LLM), §8 pitfalls 1, 2, 4, 5.

One decode step feeds the previous token through *segments* of blocks: the
blocks before the first exit, then between consecutive exits, then up to L.
Segment 0 always runs; a `lax.while_loop` then runs segment s+1 (picked by
`lax.switch`) while the exit after segment s is not confident enough, so the
blocks after an exit are really skipped (batch 1), and one compiled program
serves every exit pattern. With batch > 1 the rule is batch-synchronous
(CALM): the batch stops when every unfinished row is confident; accounting is
still per row.

After the loop the skipped blocks get their state for later tokens
(`DecodeConfig.state_mode`): `propagate` writes each skipped block's KV (or
Mamba state) from the exit hidden state (the exit layer's, not the first
segment's: CALM code quirk, §1.2); `freeze` masks them; `oracle` never
skips (every segment runs, the first confident exit's token is emitted);
`recompute` keeps the last `pending` positions in a window of hidden states
with the depth each reached. Every segment then runs on the window plus the
current token ([B, P+1] positions) with only the positions that still lack
this segment valid, so a token that goes deeper catches all earlier
early-exited positions up exactly (at most once per block, not EE-LLM's
re-run of the shallow blocks). A token whose window slot would fall out while
incomplete forces a full-depth pass first.

The whole generation loop runs inside one `jit` (`lax.while_loop` over
tokens): small-model decoding is dispatch-bound otherwise.

Axes: B batch, T prompt tokens, N generated tokens, D width, V vocabulary,
W = window width (P+1 in `recompute`, else 1).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxexit import checks
from jaxexit.decoding.backbone import DecoderBackbone
from jaxexit.decoding.config import DecodeConfig
from jaxexit.decoding.confidence import token_confidence
from jaxexit.decoding.exit_heads import DecoderExitHeads
from jaxexit.decoding.inputs import check_inputs

# Re-exported from their old home here (callers import them from engine).
from jaxexit.decoding.inputs import cache_length, check_prompts  # noqa: F401
from jaxtyping import ArrayLike

from jaxexit.typing import Array, Bool, Float, Int, PRNGKeyArray


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecodeOutput:
  """Generated tokens with per-token exit accounting.

  Attributes:
    tokens: [B, N] int32 generated ids (after a row's EOS: the EOS id, or 0).
    valid: [B, N] bool, the token was generated (a row's EOS included).
    exit_layer: [B, N] int32 blocks whose output produced the token (L when
      it came from the final layer; the first token always does).
    confidence: [B, N] float32 the rule's confidence at that exit.
    layers_computed: [B, N] int32 block applications the step ran for the
      row, catch-up positions of `recompute` included (one block on one
      position counts 1).
    layers_propagated: [B, N] int32 skipped blocks filled by `propagate`.
    segments_run: [B, N] int32 segments the step ran (the last one ends in
      the final norm + LM head).
    exits_evaluated: [B, N] int32 exit heads whose logits the step computed
      (0 with exits disabled: their states still advance).
  """

  tokens: Int[Array, "B N"]
  valid: Bool[Array, "B N"]
  exit_layer: Int[Array, "B N"]
  confidence: Float[Array, "B N"]
  layers_computed: Int[Array, "B N"]
  layers_propagated: Int[Array, "B N"]
  segments_run: Int[Array, "B N"]
  exits_evaluated: Int[Array, "B N"]


def _split_layers(backbone, caches, h, positions, valid, start, end):
  caches = list(caches)
  for i in range(start, end):
    h, caches[i] = backbone.layer(i, h, caches[i], positions, valid)
  return h, tuple(caches)


def _last(x):
  return x[:, -1]


def _exit_logits(
  backbone,
  heads,
  s,
  num_segments,
  h,
  hstates,
  positions,
  active,
  rule,
  exits_enabled,
):
  """Logits [B, V], score and new head states after segment `s`.

  The window's earlier positions only advance the head state; logits are
  computed for the current (last) position alone.
  """
  if s == num_segments - 1:
    logits = backbone.lm_head(backbone.final_norm(h[:, -1:]))[:, 0]
    score = jnp.ones(h.shape[:1], jnp.float32) if rule == "learned" else None
    return logits, score, hstates
  hstates = list(hstates)
  state = hstates[s]
  if not exits_enabled:  # No decision to make: only keep the state exact.
    hstates[s] = heads.advance(backbone, s, h, state, positions, active)
    logits = jnp.zeros((h.shape[0], backbone.vocab_size), jnp.float32)
    score = jnp.zeros(h.shape[:1], jnp.float32) if rule == "learned" else None
    return logits, score, tuple(hstates)
  if h.shape[1] > 1:
    state = heads.advance(
      backbone, s, h[:, :-1], state, positions[:, :-1], active[:, :-1]
    )
  logits, state = heads(
    backbone, s, h[:, -1:], state, positions[:, -1:], active[:, -1:]
  )
  hstates[s] = state
  score = (
    heads.score(backbone, s, h[:, -1:])[:, 0] if rule == "learned" else None
  )
  return logits[:, 0], score, tuple(hstates)


def _segment(backbone, heads, config, bounds, s, carry, positions, row_valid):
  """Runs segment `s` on the window; returns the new carry and the exit.

  In `recompute` mode a `lax.cond` runs the whole window only when some
  pending position still lacks this segment, and the current token alone
  otherwise, so the catch-up costs nothing on steps that have none.
  """
  h, depth, caches, hstates, computed = carry
  active = jnp.concatenate([depth <= s, row_valid[:, None]], axis=1)  # [B, W]

  def run(h, caches, hstates, positions, active):
    h_out, caches = _split_layers(
      backbone, caches, h, positions, active, bounds[s], bounds[s + 1]
    )
    h_out = jnp.where(active[..., None], h_out, h)
    logits, score, hstates = _exit_logits(
      backbone,
      heads,
      s,
      len(bounds) - 1,
      h_out,
      hstates,
      positions,
      active,
      config.rule,
      config.exits_enabled,
    )
    return h_out, caches, hstates, logits, score

  def current_only(h, caches, hstates):
    h_cur, caches, hstates, logits, score = run(
      h[:, -1:], caches, hstates, positions[:, -1:], active[:, -1:]
    )
    return h.at[:, -1:].set(h_cur), caches, hstates, logits, score

  whole = functools.partial(run, positions=positions, active=active)
  if h.shape[1] == 1:
    h_out, caches, hstates, logits, score = whole(h, caches, hstates)
  else:
    h_out, caches, hstates, logits, score = jax.lax.cond(
      jnp.any(active[:, :-1]), whole, current_only, h, caches, hstates
    )
  depth = jnp.where(depth <= s, s + 1, depth)
  computed = computed + (bounds[s + 1] - bounds[s]) * jnp.sum(
    active, axis=1, dtype=jnp.int32
  )
  conf = token_confidence(config.rule, logits, _last(h), _last(h_out), score)
  return (h_out, depth, caches, hstates, computed), logits, conf


def _fill_skipped(
  backbone,
  heads,
  config,
  bounds,
  stop,
  h_exit,
  caches,
  hstates,
  positions,
  valid,
):
  """Gives the blocks and heads after segment `stop` their state (§1.1)."""
  num_segments = len(bounds) - 1

  def fill(k, caches, hstates):
    caches, hstates = list(caches), list(hstates)
    for i in range(bounds[k + 1], bounds[-1]):
      if config.state_mode == "propagate":
        caches[i] = backbone.propagate(i, h_exit, caches[i], positions, valid)
      else:
        caches[i] = backbone.freeze(i, caches[i], positions, valid)
    if config.state_mode == "propagate":
      for e in range(k + 1, num_segments - 1):
        hstates[e] = heads.advance(
          backbone, e, h_exit, hstates[e], positions, valid
        )
    return tuple(caches), tuple(hstates)

  branches = [functools.partial(fill, k) for k in range(num_segments)]
  return jax.lax.switch(stop, branches, caches, hstates)


def _decode_step(
  backbone,
  heads,
  config,
  bounds,
  threshold,
  token,
  pos,
  row_valid,
  caches,
  hstates,
  pend_h,
  pend_depth,
):
  """Feeds `token` [B] at positions `pos` [B]; returns the exit and states."""
  num_segments = len(bounds) - 1
  recompute = config.state_mode == "recompute"
  width = pend_h.shape[1] + 1
  # Window slots before the sequence start are inactive; clamping them to 0
  # keeps their (no-op) cache writes off the current token's slot.
  positions = jnp.maximum(pos[:, None] + jnp.arange(1 - width, 1)[None], 0)
  h = jnp.concatenate([pend_h, backbone.embed(token[:, None])], axis=1)
  zeros = jnp.zeros(pos.shape, jnp.int32)
  carry = (h, pend_depth, caches, hstates, zeros)
  segment = functools.partial(
    _segment,
    backbone,
    heads,
    config,
    bounds,
    positions=positions,
    row_valid=row_valid,
  )
  carry, logits, conf = segment(0, carry)

  if recompute:  # The oldest window slot leaves now: it must be complete.
    force = jnp.any(row_valid & (pend_depth[:, 0] < num_segments))
  else:
    force = jnp.array(False)
  oracle = config.state_mode == "oracle"

  def confident(conf):
    return (
      config.exits_enabled & ~force & jnp.all((conf >= threshold) | ~row_valid)
    )

  found = confident(conf)
  loop = (jnp.int32(0), carry, logits, conf, found, logits, conf, jnp.int32(0))

  def cond(state):
    s, _, _, _, found, _, _, _ = state
    more = s < num_segments - 1
    return more if oracle else more & ~found

  def body(state):
    s, carry, _, _, found, best_logits, best_conf, best_s = state
    s = s + 1
    branches = [functools.partial(segment, k) for k in range(1, num_segments)]
    carry, logits, conf = jax.lax.switch(s - 1, branches, carry)
    take = ~found  # Oracle: the first confident exit (or the last) wins.
    best_logits = jnp.where(take, logits, best_logits)
    best_conf = jnp.where(take, conf, best_conf)
    best_s = jnp.where(take, s, best_s)
    found = found | confident(conf)
    return s, carry, logits, conf, found, best_logits, best_conf, best_s

  stop, carry, logits, conf, _, best_logits, best_conf, best_s = (
    jax.lax.while_loop(cond, body, loop)
  )
  h, depth, caches, hstates, computed = carry
  if oracle:
    logits, conf, stop_used = best_logits, best_conf, best_s
  else:
    stop_used = stop
  propagated = zeros
  if config.state_mode in ("propagate", "freeze"):
    caches, hstates = _fill_skipped(
      backbone,
      heads,
      config,
      bounds,
      stop,
      h[:, -1:],
      caches,
      hstates,
      positions[:, -1:],
      row_valid[:, None],
    )
    if config.state_mode == "propagate":
      propagated = zeros + (bounds[-1] - jnp.asarray(bounds)[stop + 1])
  if recompute:
    new_depth = jnp.where(row_valid, stop + 1, num_segments)
    pend_h = h[:, 1:]
    pend_depth = jnp.concatenate([depth[:, 1:], new_depth[:, None]], axis=1)
  exit_layer = zeros + jnp.asarray(bounds)[stop_used + 1]
  evaluated = jnp.minimum(stop + 1, num_segments - 1) * config.exits_enabled
  return (
    logits,
    conf,
    exit_layer,
    stop + 1 + zeros,
    evaluated + zeros,
    computed,
    propagated,
    caches,
    hstates,
    pend_h,
    pend_depth,
  )


def prefill(
  backbone: DecoderBackbone,
  heads: DecoderExitHeads,
  bounds,
  prompts: Int[ArrayLike, "B T"],
  lengths: Int[ArrayLike, "B"],
  caches: tuple,
  hstates: tuple,
) -> tuple[Float[Array, "B V"], tuple, tuple]:
  """Runs the prompt through every block and head state at full depth.

  Returns:
    The final layer's logits [B, V] at each row's last prompt token, and the
    filled caches and head states.
  """
  positions = jnp.broadcast_to(jnp.arange(prompts.shape[1]), prompts.shape)
  valid = positions < lengths[:, None]
  h = backbone.embed(prompts)
  hstates = list(hstates)
  for s in range(len(bounds) - 1):
    h, caches = _split_layers(
      backbone, caches, h, positions, valid, bounds[s], bounds[s + 1]
    )
    if s < len(bounds) - 2:
      hstates[s] = heads.advance(backbone, s, h, hstates[s], positions, valid)
  last = jnp.take_along_axis(h, (lengths - 1)[:, None, None], axis=1)
  logits = backbone.lm_head(backbone.final_norm(last))[:, 0]
  return logits, caches, tuple(hstates)


def sample(
  logits: Float[Array, "B V"], temperature: float, key: PRNGKeyArray
) -> Int[Array, "B"]:
  """Greedy argmax (temperature 0) or a draw from softmax(logits / T)."""
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, logits / temperature).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdefs", "config", "max_len"))
def _generate(
  graphdefs,
  params,
  prompts,
  lengths,
  threshold,
  key,
  *,
  config: DecodeConfig,
  max_len: int,
) -> DecodeOutput:
  backbone, heads = (nnx.merge(g, p) for g, p in zip(graphdefs, params))
  batch = prompts.shape[0]
  n_new = config.max_new_tokens
  bounds = config.boundaries(backbone.num_layers)
  num_segments = len(bounds) - 1
  caches = backbone.init_cache(batch, max_len)
  hstates = heads.init_state(num_segments - 1, batch, max_len)
  logits, caches, hstates = prefill(
    backbone, heads, bounds, prompts, lengths, caches, hstates
  )
  first = sample(logits, config.temperature, jax.random.fold_in(key, 0))
  eos = -1 if config.eos_id is None else config.eos_id
  width = config.pending if config.state_mode == "recompute" else 0
  dtype = backbone.embed(prompts[:, :1]).dtype
  pend_h = jnp.zeros((batch, width, backbone.d_model), dtype)
  pend_depth = jnp.full((batch, width), num_segments, jnp.int32)

  def record(
    out,
    n,
    token,
    row_valid,
    exit_layer,
    conf,
    segments,
    evaluated,
    computed,
    propagated,
  ):
    put = lambda a, v: a.at[:, n].set(jnp.where(row_valid, v, a[:, n]))
    return DecodeOutput(
      tokens=put(out.tokens, token),
      valid=put(out.valid, True),
      exit_layer=put(out.exit_layer, exit_layer),
      confidence=put(out.confidence, conf),
      layers_computed=put(out.layers_computed, computed),
      layers_propagated=put(out.layers_propagated, propagated),
      segments_run=put(out.segments_run, segments),
      exits_evaluated=put(out.exits_evaluated, evaluated),
    )

  fill = 0 if config.eos_id is None else config.eos_id
  zeros = jnp.zeros((batch, n_new), jnp.int32)
  out = DecodeOutput(
    tokens=zeros + fill,
    valid=jnp.zeros((batch, n_new), bool),
    exit_layer=zeros,
    confidence=jnp.zeros((batch, n_new), jnp.float32),
    layers_computed=zeros,
    layers_propagated=zeros,
    segments_run=zeros,
    exits_evaluated=zeros,
  )
  all_rows = jnp.ones((batch,), bool)
  full_conf = token_confidence(
    "max_softmax" if config.rule in ("cosine", "learned") else config.rule,
    logits,
    logits,
    logits,
    None,
  )
  full_layers = jnp.full((batch,), bounds[-1], jnp.int32)
  out = record(
    out,
    0,
    first,
    all_rows,
    full_layers,
    full_conf,
    jnp.full((batch,), num_segments, jnp.int32),
    jnp.zeros((batch,), jnp.int32),
    full_layers * lengths,
    jnp.zeros((batch,), jnp.int32),
  )
  done = first == eos

  def cond(state):
    n, _, done, *_ = state
    return (n < n_new) & ~jnp.all(done)

  def body(state):
    n, token, done, caches, hstates, pend_h, pend_depth, out = state
    row_valid = ~done
    pos = lengths + n - 1
    (
      logits,
      conf,
      exit_layer,
      segments,
      evaluated,
      computed,
      propagated,
      caches,
      hstates,
      pend_h,
      pend_depth,
    ) = _decode_step(
      backbone,
      heads,
      config,
      bounds,
      threshold,
      token,
      pos,
      row_valid,
      caches,
      hstates,
      pend_h,
      pend_depth,
    )
    new = sample(logits, config.temperature, jax.random.fold_in(key, n))
    new = jnp.where(row_valid, new, token)
    out = record(
      out,
      n,
      new,
      row_valid,
      exit_layer,
      conf,
      segments,
      evaluated,
      computed,
      propagated,
    )
    done = done | (new == eos)
    return n + 1, new, done, caches, hstates, pend_h, pend_depth, out

  state = (jnp.int32(1), first, done, caches, hstates, pend_h, pend_depth, out)
  return jax.lax.while_loop(cond, body, state)[-1]


def generate(
  backbone: DecoderBackbone,
  heads: DecoderExitHeads,
  prompts: Int[ArrayLike, "B T"],
  lengths: Int[ArrayLike, "B"],
  threshold: float,
  config: DecodeConfig,
  *,
  key: PRNGKeyArray | None = None,
  max_len: int | None = None,
) -> DecodeOutput:
  """Generates `config.max_new_tokens` tokens with early exits.

  Args:
    backbone: a `DecoderBackbone` (Llama-style or Mamba).
    heads: the exit classifiers (`LMHeadExits()` for the shared LM head).
    prompts: [B, T] right-padded prompt ids.
    lengths: [B] prompt lengths (≥ 1).
    threshold: λ ∈ [0, 1]; a token exits at the first exit whose confidence
      is ≥ λ. Traced: sweeping it does not recompile.
    config: static settings (exits, rule, state mode, sampling).
    key: PRNG key for temperature sampling (default `jax.random.key(0)`).
    max_len: cache positions (default: exactly what the prompts need).

  Returns:
    A `DecodeOutput` with [B, N] tokens and per-token exit accounting.

  Raises:
    ValueError: on an empty batch (B = 0), a prompt id or `config.eos_id`
      outside [0, V), or a longest prompt + max_new_tokens beyond the
      backbone's `max_position` (`jaxexit.decoding.inputs`).
  """
  config.check_backbone(backbone)
  checks.in_range("threshold", threshold, 0.0, 1.0)
  max_len = check_inputs(
    backbone,
    prompts,
    lengths,
    max_new_tokens=config.max_new_tokens,
    eos_id=config.eos_id,
    max_len=max_len,
  )
  if config.rule == "learned" and not hasattr(heads, "score"):
    raise ValueError(
      f"rule='learned' needs exit heads with a `score` method; "
      f"{type(heads).__name__} has none"
    )
  graphdefs, params = zip(*(nnx.split(m) for m in (backbone, heads)))
  key = jax.random.key(0) if key is None else key
  return _generate(
    tuple(graphdefs),
    tuple(params),
    jnp.asarray(prompts, jnp.int32),
    jnp.asarray(lengths, jnp.int32),
    jnp.asarray(threshold, jnp.float32),
    key,
    config=config,
    max_len=max_len,
  )
