"""ExIt's multiplicative diversity bonus on GRPO advantages.

Paper: ExIt (Jiang, Lupu & Bachrach, arXiv:2509.04575) §4.3, adapted from
Chung et al. (2025); spec `exploratory_iteration.md` §3.7 and §7 item 7. With
e_i the
embedding of rollout i's solution, ē the group centroid and δ_i = ‖e_i − ē‖:

  d_i = δ_i / (max_j δ_j − min_j δ_j + eps),   A_i ← d_i · A_i.

d_i is not bounded in [0, 1] (the range is not subtracted from δ_i). When the
range is below eps (all rollouts equally far from the centroid, e.g. all
identical) d_i = 1, leaving the advantages unchanged.

Axes: P prompts (groups), G generations per prompt, E embedding width.
"""

import jax.numpy as jnp

from jaxexit import checks
from jaxexit.typing import Array, Float


def diversity_coefficients(
  embeddings: Float[Array, "P G E"], *, eps: float = 1e-6
) -> Float[Array, "P G"]:
  """Per-rollout diversity multipliers d_i (see the module docstring).

  The embeddings come from a frozen encoder, so this is not meant to be
  differentiated (‖·‖ has no gradient at 0).

  Args:
    embeddings: [P, G, E] one embedding per rollout.
    eps: added to the range; ranges below eps give d = 1.

  Returns:
    [P, G] float32 coefficients ≥ 0.
  """
  checks.in_range("eps", eps, 0.0, float("inf"), low_open=True, high_open=True)
  emb = embeddings.astype(jnp.float32)
  centroid = jnp.mean(emb, axis=1, keepdims=True)  # [P, 1, E]
  dist = jnp.linalg.norm(emb - centroid, axis=-1)  # [P, G]
  spread = jnp.max(dist, axis=-1, keepdims=True) - jnp.min(
    dist, axis=-1, keepdims=True
  )  # [P, 1]
  return jnp.where(spread < eps, 1.0, dist / (spread + eps))
