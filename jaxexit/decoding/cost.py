"""FLOPs of early-exit decoding per generated token, counted by XLA (§1.5).

Each piece of one decode step (one block on one position, a `propagate`
write, each exit head, the final norm + LM head) is compiled alone at batch 1
with a `max_len` cache and costed by `xla_flops`. A token's cost is then

  layers_computed · block + layers_propagated · propagate
    + exit_projections · head + scores_computed · score
    (+ final head if it reached layer L)

which counts the exit heads (a full-vocabulary projection per exit is not
free, pitfall 3; heads and score heads are costed at their mean over the
exits) and the catch-up work of `recompute` (inside `layers_computed`).
The full model costs L · block + final head. Attention
cost depends on the cache length, so costs are for one `max_len`.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxexit.decoding.engine import DecodeOutput
from jaxexit.execution.flops import xla_flops


@dataclasses.dataclass(frozen=True)
class DecodeCosts:
  """FLOPs of one position through each piece of a decode step.

  Attributes:
    block: [L] each block.
    propagate: [L] each block's `propagate`.
    head: [E] each exit head (logits for one position).
    score: [E] each exit's `score` head (zeros for heads without one).
    final: final norm + LM head.
    boundaries: segment edges (0, e_1, …, L).
  """

  block: np.ndarray
  propagate: np.ndarray
  head: np.ndarray
  score: np.ndarray
  final: float
  boundaries: tuple[int, ...]

  @property
  def full(self) -> float:
    """FLOPs of one token through the full model."""
    return float(self.block.sum() + self.final)

  def in_blocks(self) -> dict[str, list[float] | float]:
    """Each piece's cost in units of the mean block (one position).

    E.g. SmolLM2-135M (measured): the shared 576 x 49152 head costs 7.87
    blocks, so a rule that reads logits pays that at every exit it checks;
    a score head (576 -> 1) is ~2e-4 of a block by hand count.
    """
    unit = float(self.block.mean())
    return {
      "head": [float(x) / unit for x in self.head],
      "score": [float(x) / unit for x in self.score],
      "propagate": float(self.propagate.mean()) / unit,
      "final": float(self.final) / unit,
    }


def decode_costs(backbone, heads, boundaries, max_len: int) -> DecodeCosts:
  """Costs every piece of a batch-1 decode step with a `max_len` cache."""
  graphdefs, params = zip(*(nnx.split(m) for m in (backbone, heads)))
  merged = lambda p: tuple(nnx.merge(g, q) for g, q in zip(graphdefs, p))
  h = jnp.zeros((1, 1, backbone.d_model), jnp.float32)
  pos = jnp.zeros((1, 1), jnp.int32)
  valid = jnp.ones((1, 1), bool)
  caches = backbone.init_cache(1, max_len)
  num_exits = len(boundaries) - 2
  hstates = heads.init_state(num_exits, 1, max_len)

  def block(i, method):
    def fn(p, c):
      bb, _ = merged(p)
      if method == "layer":
        return bb.layer(i, h, c, pos, valid)
      return bb.propagate(i, h, c, pos, valid)

    return xla_flops(fn, params, caches[i])

  def head(e):
    def fn(p, s):
      bb, hd = merged(p)
      return hd(bb, e, h, s, pos, valid)[0]

    return xla_flops(fn, params, hstates[e])

  def score(e):
    if not hasattr(heads, "score"):
      return 0.0

    def fn(p):
      bb, hd = merged(p)
      return hd.score(bb, e, h)

    return xla_flops(fn, params)

  def final(p):
    bb, _ = merged(p)
    return bb.lm_head(bb.final_norm(h))

  layers = range(backbone.num_layers)
  return DecodeCosts(
    block=np.array([block(i, "layer") for i in layers]),
    propagate=np.array([block(i, "propagate") for i in layers]),
    head=np.array([head(e) for e in range(num_exits)]),
    score=np.array([score(e) for e in range(num_exits)]),
    final=xla_flops(final, params),
    boundaries=tuple(boundaries),
  )


def token_flops(out: DecodeOutput, costs: DecodeCosts) -> np.ndarray:
  """[B, N] FLOPs of each generated token's decode step (0 where invalid).

  Blocks are costed at their mean (they are identical in every supported
  backbone); the first token, produced by the prefill, counts as a full
  step.
  """
  reached_final = np.asarray(out.segments_run) == len(costs.head) + 1
  mean = lambda x: float(np.mean(x)) if len(x) else 0.0
  flops = (
    np.asarray(out.layers_computed) * costs.block.mean()
    + np.asarray(out.layers_propagated) * costs.propagate.mean()
    + np.asarray(out.exit_projections) * mean(costs.head)
    + np.asarray(out.scores_computed) * mean(costs.score)
    + reached_final * costs.final
  )
  flops[:, 0] = costs.full
  return np.where(np.asarray(out.valid), flops, 0.0)


def decode_flops_fraction(out: DecodeOutput, costs: DecodeCosts) -> float:
  """Mean FLOPs per decode step over generated tokens ÷ the full model's.

  The prefill token is left out (it is the same for every method).
  """
  valid = np.asarray(out.valid)[:, 1:]
  if not valid.any():
    raise ValueError("no decode steps to cost: every row stopped at token 0")
  per_token = token_flops(out, costs)[:, 1:]
  return float(per_token[valid].mean() / costs.full)
