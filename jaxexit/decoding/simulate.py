"""Simulated early exit over a fixed sequence (the oracle-cache evaluation).

Runs every block on the whole sequence at once (teacher forcing), keeps every
exit's prediction and confidence, and picks each position's exit afterwards:
what papers' quality numbers use (§1.4). It is exact for early-exit decoding
only under the `oracle` state mode, which the tests check token for token.

Axes: B batch, T tokens, D width.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxexit.decoding.config import DecodeConfig
from jaxexit.decoding.rules import (
  exit_measure,
  final_confidence,
  resolve_rule,
)
from jaxexit.exits import ExitHeadOutput
from jaxtyping import ArrayLike

from jaxexit.typing import Array, Float, Int


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SimulatedExits:
  """Per-position exits chosen after the fact.

  Attributes:
    exit_layer: [B, T] int32 blocks used to predict token t+1 (L: final).
    prediction: [B, T] int32 greedy next-token id at that exit.
    confidence: [B, T] float32 the rule's measure at that exit.
    full_prediction: [B, T] int32 the final layer's greedy prediction.
    exit_confidence: [B, T, E+1] every exit's measure (the final last; 0
      for rules without a measure).
    exit_prediction: [B, T, E+1] int32 every exit's greedy prediction (the
      final last), so decisions at other thresholds of a memoryless rule
      can be made after the fact.
  """

  exit_layer: Int[Array, "B T"]
  prediction: Int[Array, "B T"]
  confidence: Float[Array, "B T"]
  full_prediction: Int[Array, "B T"]
  exit_confidence: Float[Array, "B T E"]
  exit_prediction: Int[Array, "B T E"]


@functools.partial(jax.jit, static_argnames=("graphdefs", "config"))
def _simulate(graphdefs, params, tokens, lengths, threshold, *, config):
  backbone, heads = (nnx.merge(g, p) for g, p in zip(graphdefs, params))
  rule = resolve_rule(config.rule, threshold)
  batch, length = tokens.shape
  bounds = config.boundaries(backbone.num_layers)
  num_exits = len(bounds) - 2
  positions = jnp.broadcast_to(jnp.arange(length), tokens.shape)
  valid = positions < lengths[:, None]
  caches = list(backbone.init_cache(batch, length))
  hstates = heads.init_state(num_exits, batch, length)
  flat = lambda x: x.reshape(batch * length, *x.shape[2:])
  rule_state = rule.init(batch * length, None)
  h = backbone.embed(tokens)
  preds, confs, exits = [], [], []
  for s in range(num_exits + 1):
    h_in = h
    for i in range(bounds[s], bounds[s + 1]):
      h, caches[i] = backbone.layer(i, h, caches[i], positions, valid)
    extra = {"h_in": flat(h_in), "h_out": flat(h)}
    if s < num_exits:
      logits, _ = heads(backbone, s, h, hstates[s], positions, valid)
      score = None
      if "score" in rule.reads:
        score = flat(heads.score(backbone, s, h))
      out = ExitHeadOutput(logits=flat(logits), score=score, extra=extra)
      rule_state, exit_now = rule.update(rule_state, out, s)
      exits.append(jnp.asarray(exit_now, bool) & config.exits_enabled)
      conf = exit_measure(rule, out, batch * length)
    else:
      logits = backbone.lm_head(backbone.final_norm(h))
      exits.append(jnp.ones((batch * length,), bool))
      conf = final_confidence(rule, flat(logits), extra)
    preds.append(jnp.argmax(logits, axis=-1).astype(jnp.int32))
    confs.append(conf.reshape(batch, length))
  preds = jnp.stack(preds, axis=-1)  # [B, T, E+1]
  confs = jnp.stack(confs, axis=-1)
  ok = jnp.stack(exits, axis=-1).reshape(batch, length, num_exits + 1)
  chosen = jnp.argmax(ok, axis=-1)  # first exit the rule takes
  pick = lambda x: jnp.take_along_axis(x, chosen[..., None], axis=-1)[..., 0]
  return SimulatedExits(
    exit_layer=jnp.asarray(bounds[1:], jnp.int32)[chosen],
    prediction=pick(preds),
    confidence=pick(confs),
    full_prediction=preds[..., -1],
    exit_confidence=confs,
    exit_prediction=preds,
  )


def simulate_exits(
  backbone,
  heads,
  tokens: Int[ArrayLike, "B T"],
  lengths: Int[ArrayLike, "B"],
  threshold: float,
  config: DecodeConfig,
) -> SimulatedExits:
  """Exit decisions of `config` (rule, exits) on a teacher-forced sequence.

  The rule sees every position independently (batch B·T), so it equals
  `generate` in `oracle` mode at batch 1.
  """
  config.boundaries(backbone.num_layers)
  graphdefs, params = zip(*(nnx.split(m) for m in (backbone, heads)))
  return _simulate(
    tuple(graphdefs),
    tuple(params),
    jnp.asarray(tokens, jnp.int32),
    jnp.asarray(lengths, jnp.int32),
    jnp.asarray(threshold, jnp.float32),
    config=config,
  )
