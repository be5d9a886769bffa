"""Rewards of ExIt self-iteration steps.

Paper: ExIt (Jiang, Lupu & Bachrach, arXiv:2509.04575) §4 and Appendix A;
spec `exploratory_iteration.md` §3.6 and §7 item 13. A self-improve step is
rewarded either
with the plain quality of its new iterate (the paper's math and tool-use
setting) or with the normalised improvement over the previous iterate
(MLE-bench): r_imp = max(0, (q − q_prev) / (1 − q_prev)).

Axes: any shape; `q_prev` broadcasts against `q_new` at equal rank (e.g.
q_new [P, G] with q_prev [P, 1]: every rollout of a group shares its start).
"""

import jax.numpy as jnp
from jaxtyping import ArrayLike

from jaxexit import checks
from jaxexit.typing import Array, Float

IMPROVE_REWARDS = ("quality", "normalized_delta")


def improvement_reward(
  q_new: Float[ArrayLike, "..."],
  q_prev: Float[ArrayLike, "..."],
  kind: str = "quality",
) -> Float[Array, "..."]:
  """The training reward of a self-iteration step.

  Args:
    q_new: qualities in [0, 1] of the new iterates.
    q_prev: qualities in [0, 1] of the iterates they rewrite (same rank as
      q_new, broadcastable).
    kind: "quality" (r = q_new) or "normalized_delta" (r = max(0, (q_new −
      q_prev) / (1 − q_prev)), the improvement as a fraction of the largest
      possible one; where q_prev = 1 no improvement is possible and r = q_new,
      i.e. 1 for keeping a perfect answer, less for breaking it).

  Returns:
    Rewards in [0, 1], float32, of the broadcast shape.
  """
  checks.one_of("kind", kind, IMPROVE_REWARDS)
  checks.in_range("q_new", q_new, 0.0, 1.0)
  checks.in_range("q_prev", q_prev, 0.0, 1.0)
  q_new = jnp.asarray(q_new, jnp.float32)
  q_prev = jnp.asarray(q_prev, jnp.float32)
  if kind == "quality":
    return jnp.broadcast_arrays(q_new, q_prev)[0]
  headroom = 1.0 - q_prev
  solved = headroom <= 0.0
  # A safe denominator keeps the unused branch (and its gradient) finite.
  delta = (q_new - q_prev) / jnp.where(solved, 1.0, headroom)
  return jnp.where(solved, q_new, jnp.maximum(delta, 0.0))
