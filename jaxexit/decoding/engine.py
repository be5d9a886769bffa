"""Early-exit generation with real layer skipping, for any `DecoderBackbone`.

Spec: `llm_exits.md` §1.1–1.2, §5.1–5.2, §8. `generate` prefills the prompt
at full depth, then runs the whole generation loop inside one `jit` (a
`lax.while_loop` over tokens; small-model decoding is dispatch-bound
otherwise), one `step.DecodeStep` per token: segments of blocks between the
exits, each run only while no exit was confident, the rule of
`DecodeConfig.rule` (a `jaxexit.exits.ExitRule`) deciding at each exit, and
the skipped blocks' state filled by the state mode.

Axes: B batch, T prompt tokens, N generated tokens, D width, V vocabulary.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxexit.decoding.backbone import DecoderBackbone
from jaxexit.decoding.config import DecodeConfig
from jaxexit.decoding.exit_heads import DecoderExitHeads
from jaxexit.decoding.inputs import check_inputs
from jaxexit.decoding.rules import (
  check_heads,
  final_confidence,
  resolve_rule,
)
from jaxexit.decoding.sharded import shard_caches
from jaxexit.decoding.step import DecodeStep, StepResult, StepState

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
    confidence: [B, N] float32 the rule's `measure` at that exit (0 for
      rules without one).
    layers_computed: [B, N] int32 block applications the step ran for the
      row, catch-up positions of `recompute` included (one block on one
      position counts 1).
    layers_propagated: [B, N] int32 skipped blocks filled by `propagate`.
    segments_run: [B, N] int32 segments the step ran (the last one ends in
      the final norm + LM head).
    exit_projections: [B, N] int32 exit-head vocabulary projections the
      step computed (every exit reached for rules that read logits, else
      only the exit taken; 0 with exits disabled).
    scores_computed: [B, N] int32 exit-head `score` evaluations.
  """

  tokens: Int[Array, "B N"]
  valid: Bool[Array, "B N"]
  exit_layer: Int[Array, "B N"]
  confidence: Float[Array, "B N"]
  layers_computed: Int[Array, "B N"]
  layers_propagated: Int[Array, "B N"]
  segments_run: Int[Array, "B N"]
  exit_projections: Int[Array, "B N"]
  scores_computed: Int[Array, "B N"]

  @classmethod
  def empty(cls, batch: int, n: int, fill: int) -> "DecodeOutput":
    """No token generated yet; `tokens` hold `fill`."""
    zeros = jnp.zeros((batch, n), jnp.int32)
    return cls(
      tokens=zeros + fill,
      valid=jnp.zeros((batch, n), bool),
      exit_layer=zeros,
      confidence=jnp.zeros((batch, n), jnp.float32),
      layers_computed=zeros,
      layers_propagated=zeros,
      segments_run=zeros,
      exit_projections=zeros,
      scores_computed=zeros,
    )

  def record(
    self, n, token: Int[Array, "B"], rows: Bool[Array, "B"], step: StepResult
  ) -> "DecodeOutput":
    """Writes token `n` and its accounting for the rows in `rows`."""
    put = lambda a, v: a.at[:, n].set(jnp.where(rows, v, a[:, n]))
    return DecodeOutput(
      tokens=put(self.tokens, token),
      valid=put(self.valid, True),
      exit_layer=put(self.exit_layer, step.exit_layer),
      confidence=put(self.confidence, step.confidence),
      layers_computed=put(self.layers_computed, step.layers_computed),
      layers_propagated=put(self.layers_propagated, step.layers_propagated),
      segments_run=put(self.segments_run, step.segments_run),
      exit_projections=put(self.exit_projections, step.exit_projections),
      scores_computed=put(self.scores_computed, step.scores_computed),
    )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Loop:
  """The token loop's carry: token `n` is next; `token` was emitted last."""

  n: Int[Array, ""]
  token: Int[Array, "B"]
  done: Bool[Array, "B"]
  state: StepState
  out: DecodeOutput


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
  caches = list(caches)
  for s in range(len(bounds) - 1):
    for i in range(bounds[s], bounds[s + 1]):
      h, caches[i] = backbone.layer(i, h, caches[i], positions, valid)
    if s < len(bounds) - 2:
      hstates[s] = heads.advance(backbone, s, h, hstates[s], positions, valid)
  last = jnp.take_along_axis(h, (lengths - 1)[:, None, None], axis=1)
  logits = backbone.lm_head(backbone.final_norm(last))[:, 0]
  return logits, tuple(caches), tuple(hstates)


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
  bounds = config.boundaries(backbone.num_layers)
  num_segments = len(bounds) - 1
  step = DecodeStep(
    backbone, heads, config, bounds, resolve_rule(config.rule, threshold)
  )
  caches = shard_caches(backbone.init_cache(batch, max_len))
  hstates = heads.init_state(num_segments - 1, batch, max_len)
  logits, caches, hstates = prefill(
    backbone, heads, bounds, prompts, lengths, caches, hstates
  )
  first = sample(logits, config.temperature, jax.random.fold_in(key, 0))
  eos = -1 if config.eos_id is None else config.eos_id
  width = config.pending if config.state_mode == "recompute" else 0
  dtype = backbone.embed(prompts[:, :1]).dtype
  full_layers = jnp.full((batch,), bounds[-1], jnp.int32)
  zeros = jnp.zeros((batch,), jnp.int32)
  prefilled = StepResult(
    logits=logits,
    confidence=final_confidence(step.rule, logits),
    exit_layer=full_layers,
    segments_run=zeros + num_segments,
    exit_projections=zeros,
    scores_computed=zeros,
    layers_computed=full_layers * lengths,
    layers_propagated=zeros,
  )
  fill = 0 if config.eos_id is None else config.eos_id
  out = DecodeOutput.empty(batch, config.max_new_tokens, fill)
  out = out.record(0, first, jnp.ones((batch,), bool), prefilled)
  state = StepState(
    caches=caches,
    hstates=hstates,
    pend_h=jnp.zeros((batch, width, backbone.d_model), dtype),
    pend_depth=jnp.full((batch, width), num_segments, jnp.int32),
  )

  def cond(loop):
    return (loop.n < config.max_new_tokens) & ~jnp.all(loop.done)

  def body(loop):
    rows = ~loop.done
    state, result = step(loop.token, lengths + loop.n - 1, rows, loop.state)
    n_key = jax.random.fold_in(key, loop.n)
    new = sample(result.logits, config.temperature, n_key)
    new = jnp.where(rows, new, loop.token)
    return _Loop(
      n=loop.n + 1,
      token=new,
      done=loop.done | (new == eos),
      state=state,
      out=loop.out.record(loop.n, new, rows, result),
    )

  loop = _Loop(jnp.int32(1), first, first == eos, state, out)
  return jax.lax.while_loop(cond, body, loop).out


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
    threshold: λ, the threshold of a named rule or a rule factory
      (`DecodeConfig.rule`; e.g. a token exits at the first exit whose
      max-softmax is ≥ λ). Traced: sweeping it does not recompile.
    config: static settings (exits, rule, state mode, sampling).
    key: PRNG key for temperature sampling (default `jax.random.key(0)`).
    max_len: cache positions (default: exactly what the prompts need).

  Returns:
    A `DecodeOutput` with [B, N] tokens and per-token exit accounting.

  Raises:
    ValueError: on an empty batch (B = 0), a prompt id or `config.eos_id`
      outside [0, V), a longest prompt + max_new_tokens beyond the
      backbone's `max_position` (`jaxexit.decoding.inputs`), a threshold
      its rule refuses (e.g. max-softmax outside [0, 1]), or a rule that
      reads `score` with heads that have none.
  """
  config.check_backbone(backbone)
  max_len = check_inputs(
    backbone,
    prompts,
    lengths,
    max_new_tokens=config.max_new_tokens,
    eos_id=config.eos_id,
    max_len=max_len,
  )
  check_heads(resolve_rule(config.rule, threshold), heads)
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
