"""ExIt learnability scores: the reward variance of a GRPO group.

Paper: ExIt (Jiang, Lupu & Bachrach, arXiv:2509.04575) §4.1; spec
`exploratory_iteration.md` §3.4 (S = Var_G(r), population variance by default)
and §7 item
14 (score normalisation for dense rewards).

Axes: P prompts (groups), G generations per prompt, N scores (a buffer's
capacity or any flat set of scores).
"""

import jax.numpy as jnp

from jaxexit import checks
from jaxexit.rl.grpo import group_center
from jaxexit.typing import Array, Bool, Float

SCORE_NORMS = ("none", "max", "rank")


def group_learnability(
  rewards: Float[Array, "P G"], *, ddof: int = 0
) -> Float[Array, "P"]:
  """S = Var_G(r) per group; p(1 − p) for binary rewards with ddof = 0.

  Args:
    rewards: [P, G] per-rollout rewards (the training reward by default, or
      the raw quality; rescaled into [0, 1] so S ∈ [0, 0.25]).
    ddof: 0 (population variance, the default) or 1 (sample variance).

  Returns:
    [P] float32 scores, exactly 0 for constant groups.
  """
  checks.one_of("ddof", ddof, (0, 1))
  checks.positive_int("G", rewards.shape[-1], minimum=ddof + 1)
  centered = group_center(rewards.astype(jnp.float32))
  return jnp.sum(centered**2, axis=-1) / (rewards.shape[-1] - ddof)


def normalize_scores(
  scores: Float[Array, "N"],
  mode: str = "none",
  valid: Bool[Array, "N"] | None = None,
) -> Float[Array, "N"]:
  """Rescales scores before the softmax(κ·S) replay distribution.

  With dense rewards the group variances are tiny (S ≈ 0.003 in the toy), so
  κ·S is nearly constant and replay is nearly uniform. The modes:

  * "none": S unchanged (the paper).
  * "max": S / max(S) over valid entries, so the best entry scores 1 and κ
    is the log weight ratio between it and a zero-score entry (unchanged when
    max(S) ≤ 0).
  * "rank": the mid-rank of S among valid entries scaled to [0, 1] (ties
    share their mean rank, a lone entry gets 1), so κ is the log weight ratio
    between the best and the worst entry whatever the spread of S.

  Args:
    scores: [N] scores (−inf or anything at invalid entries).
    mode: one of `SCORE_NORMS`.
    valid: [N] entries that take part (default: the finite scores). Invalid
      entries are returned unchanged.

  Returns:
    [N] float32 normalised scores.
  """
  checks.one_of("mode", mode, SCORE_NORMS)
  scores = scores.astype(jnp.float32)
  if valid is None:
    valid = jnp.isfinite(scores)
  if mode == "none":
    return scores
  if mode == "max":
    top = jnp.max(jnp.where(valid, scores, -jnp.inf))
    scaled = scores / jnp.where(top > 0, top, 1.0)
    return jnp.where(valid, scaled, scores)
  # Sorting valid entries first (invalid ones pushed to +inf) turns the
  # counts of smaller / not-larger valid scores into two binary searches.
  ordered = jnp.sort(jnp.where(valid, scores, jnp.inf))
  below = jnp.searchsorted(ordered, scores, side="left")
  upto = jnp.searchsorted(ordered, scores, side="right")
  count = jnp.sum(valid)
  mid_rank = 0.5 * (below + upto - 1).astype(jnp.float32)  # 0-based
  rank = jnp.where(count > 1, mid_rank / jnp.maximum(count - 1, 1), 1.0)
  return jnp.where(valid, rank, scores)
