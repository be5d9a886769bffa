"""GRPO: group-relative advantages, the clipped surrogate, k3 KL, ref updates.

Papers: DeepSeekMath (Shao et al., 2024) for GRPO; ExIt (Jiang, Lupu &
Bachrach, arXiv:2509.04575) Eq. 3–5 and its reference-policy resets; Dr. GRPO
(Liu et al., 2025) for the length- and std-free variant. Spec:
`exploratory_iteration.md` §3.1, §7 items 8–9, §8 (TRL/EasyDeL naming).

Axes: P prompts (groups), G generations per prompt, N = P·G rollouts (any
order; a rollout's advantage is one scalar), T completion tokens (padded;
`mask` marks the tokens that count).

Everything here is a pure function of arrays with static configuration, so it
runs under `jax.jit` and `jax.vmap` (e.g. a vmapped seed axis).
"""

import dataclasses

import jax
import jax.numpy as jnp
from jaxtyping import ArrayLike, Real

from jaxexit import checks
from jaxexit.typing import Array, Bool, Float, PyTree

LOSS_AGGS = ("seq_mean", "token_mean", "dr_grpo")
REWARD_SCALES = ("group", "none")

ScalarLike = Real[ArrayLike, ""]


@dataclasses.dataclass(frozen=True, kw_only=True)
class GRPOConfig:
  """Static GRPO settings (field names follow TRL / EasyDeL).

  Attributes:
    num_generations: G ≥ 2 rollouts per prompt (paper: 8).
    epochs: PPO passes over each batch (`num_iterations` in TRL); ≥ 2 makes
      the ratio leave 1 so clipping acts (paper: 1 math, 2 tool use).
    clip_eps: ε of the clipped surrogate, in (0, 1) (paper: 0.2).
    beta: weight of the k3 KL(π_θ ‖ π_ref) penalty, ≥ 0 (paper math: 1e-3).
    ref_update_every: M, iterations between reference updates (paper: 100).
    ref_alpha: α of θ_ref ← α·θ + (1 − α)·θ_ref, in [0, 1] (1 = hard reset;
      paper: 1.0, MLE-bench 0.5).
    loss_agg: "seq_mean" (paper Eq. 4: mean over each rollout's tokens, then
      over rollouts), "token_mean" (mean over every valid token of the batch,
      as Tunix) or "dr_grpo" (sum over tokens ÷ (N · max_len), a constant).
    scale_rewards: "group" (divide by the group std, GRPO) or "none" (only
      subtract the group mean, Dr. GRPO).
  """

  num_generations: int = 8
  epochs: int = 1
  clip_eps: float = 0.2
  beta: float = 0.0
  ref_update_every: int = 100
  ref_alpha: float = 1.0
  loss_agg: str = "seq_mean"
  scale_rewards: str = "group"

  def __post_init__(self):
    checks.positive_int(
      "GRPOConfig.num_generations", self.num_generations, minimum=2
    )
    checks.positive_int("GRPOConfig.epochs", self.epochs)
    checks.in_range(
      "GRPOConfig.clip_eps",
      self.clip_eps,
      0.0,
      1.0,
      low_open=True,
      high_open=True,
    )
    checks.in_range(
      "GRPOConfig.beta", self.beta, 0.0, float("inf"), high_open=True
    )
    checks.positive_int("GRPOConfig.ref_update_every", self.ref_update_every)
    checks.in_range("GRPOConfig.ref_alpha", self.ref_alpha, 0.0, 1.0)
    checks.one_of("GRPOConfig.loss_agg", self.loss_agg, LOSS_AGGS)
    checks.one_of("GRPOConfig.scale_rewards", self.scale_rewards, REWARD_SCALES)


def group_center(x: Float[Array, "*b G"]) -> Float[Array, "*b G"]:
  """`x − mean(x)` over the last (group) axis, exactly 0 for a constant group.

  The mean is taken relative to the first element, so identical values give
  an exact zero (a plain mean can be off by an ulp, and the std division
  would blow that up).
  """
  rel = x - x[..., :1]
  return rel - jnp.mean(rel, axis=-1, keepdims=True)


def group_advantages(
  rewards: Float[Array, "P G"],
  *,
  scale: str = "group",
  eps: float = 1e-6,
  ddof: int = 0,
) -> Float[Array, "P G"]:
  """A_i = (r_i − mean_G r) / (std_G r + eps), or without the std ("none").

  Args:
    rewards: [P, G] one scalar reward per rollout, grouped by prompt.
    scale: "group" (GRPO) or "none" (Dr. GRPO: mean-centred only).
    eps: added to the std; constant groups get exactly 0 (never NaN).
    ddof: 0 (population std) or 1 (sample std, as TRL and Tunix).

  Returns:
    [P, G] float32 advantages (mean 0 per group; std ≈ 1 with "group").
  """
  checks.one_of("scale", scale, REWARD_SCALES)
  checks.in_range("eps", eps, 0.0, float("inf"), high_open=True)
  checks.one_of("ddof", ddof, (0, 1))
  checks.positive_int("G", rewards.shape[-1], minimum=ddof + 1)
  centered = group_center(rewards.astype(jnp.float32))
  if scale == "none":
    return centered
  g = rewards.shape[-1]
  var = jnp.sum(centered**2, axis=-1, keepdims=True) / (g - ddof)
  # sqrt has an infinite slope at 0: keep constant groups' gradients finite.
  pos = var > 0
  std = jnp.where(pos, jnp.sqrt(jnp.where(pos, var, 1.0)), 0.0)
  return centered / (std + eps)


def kl_k3(
  logp: Float[Array, "*s"], logp_ref: Float[Array, "*s"]
) -> Float[Array, "*s"]:
  """Per-token k3 estimator of KL(π ‖ π_ref) on tokens sampled from π.

  k3 = ρ − log ρ − 1 with ρ = π_ref/π (Schulman, "Approximating KL
  divergence", 2020): unbiased, and ≥ 0 token by token. Written as
  expm1(x) − x, exact near x = 0.

  Args:
    logp: [*s] log π of the sampled tokens.
    logp_ref: [*s] log π_ref of the same tokens.

  Returns:
    [*s] float32 k3 values, ≥ 0, 0 where the log-probabilities agree.
  """
  log_ratio = logp_ref.astype(jnp.float32) - logp.astype(jnp.float32)
  return jnp.maximum(jnp.expm1(log_ratio) - log_ratio, 0.0)


def _aggregate(per_token: Array, mask: Array, agg: str, max_len: int) -> Array:
  """Reduces [N, T] per-token values to a scalar (see `grpo_loss`)."""
  total = jnp.sum(per_token * mask, axis=-1)  # [N]
  if agg == "seq_mean":
    return jnp.mean(total / jnp.maximum(jnp.sum(mask, axis=-1), 1.0))
  if agg == "token_mean":
    return jnp.sum(total) / jnp.maximum(jnp.sum(mask), 1.0)
  return jnp.sum(total) / (per_token.shape[0] * max_len)


def _token_mean(x: Array, mask: Array) -> Array:
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def grpo_loss(
  logp_new: Float[Array, "N T"],
  logp_old: Float[Array, "N T"],
  advantages: Float[Array, "N"],
  mask: Bool[Array, "N T"] | Float[Array, "N T"],
  *,
  logp_ref: Float[Array, "N T"] | None = None,
  clip_eps: float = 0.2,
  beta: float = 0.0,
  agg: str = "seq_mean",
  max_len: int | None = None,
) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
  """The negated clipped GRPO objective (to minimise) and its diagnostics.

  Per token: ρ = exp(logp_new − logp_old), J = min(ρA, clip(ρ, 1 ± ε)A)
  − β·k3(logp_new, logp_ref), and the loss is −aggregate(J) with

  * "seq_mean" (paper Eq. 4): (1/N) Σ_i (1/|o_i|) Σ_t J_it; a rollout with an
    empty mask (e.g. overlong-filtered) adds 0 and still counts in 1/N.
  * "token_mean": Σ_it J_it / Σ_it mask_it (every valid token weighs the same).
  * "dr_grpo" (Dr. GRPO): Σ_it J_it / (N · max_len), no length bias.

  With one epoch logp_old = stop_gradient(logp_new), ρ = 1 and the gradient
  is the plain policy gradient −agg(A ∇log π).

  Args:
    logp_new: [N, T] log π_θ of the sampled tokens (differentiated).
    logp_old: [N, T] log π_old of the same tokens, from the sampling policy.
    advantages: [N] one advantage per rollout (e.g. `group_advantages`
      flattened, optionally times the diversity coefficients).
    mask: [N, T] 1 for completion tokens that count, 0 for padding/prompt.
    logp_ref: [N, T] log π_ref; required when beta > 0, otherwise only used
      for the `kl_ref` metric.
    clip_eps: ε ∈ (0, 1).
    beta: KL weight ≥ 0 (a Python float: 0 skips the penalty at trace time).
    agg: one of `LOSS_AGGS`.
    max_len: the constant length of "dr_grpo" (default T, the padded
      completion budget).

  Returns:
    (loss, metrics): the scalar loss and float32 scalars `clip_fraction`
    (valid tokens whose clipped branch is active, i.e. zero gradient),
    `approx_kl` (k3 of KL(π_old ‖ π_θ)), `kl_ref` (k3 of KL(π_θ ‖ π_ref), 0
    without logp_ref) and `ratio_mean`, all token means over the mask.
  """
  checks.one_of("agg", agg, LOSS_AGGS)
  checks.in_range("clip_eps", clip_eps, 0.0, 1.0, low_open=True, high_open=True)
  checks.in_range("beta", beta, 0.0, float("inf"), high_open=True)
  if beta > 0 and logp_ref is None:
    raise ValueError(f"beta={beta} > 0 needs logp_ref")
  max_len = logp_new.shape[-1] if max_len is None else max_len
  checks.positive_int("max_len", max_len)
  mask = mask.astype(jnp.float32)
  logp_new = logp_new.astype(jnp.float32)
  log_ratio = logp_new - logp_old.astype(jnp.float32)
  ratio = jnp.exp(log_ratio)  # [N, T]
  adv = advantages.astype(jnp.float32)[:, None]  # [N, 1]
  unclipped = ratio * adv
  clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
  objective = jnp.minimum(unclipped, clipped)
  if logp_ref is None:
    kl_ref = jnp.zeros_like(objective)
  else:
    kl_ref = kl_k3(logp_new, logp_ref)
  if beta > 0:
    objective = objective - beta * kl_ref
  loss = -_aggregate(objective, mask, agg, max_len)
  is_clipped = (clipped < unclipped).astype(jnp.float32)
  metrics = dict(
    clip_fraction=_token_mean(is_clipped, mask),
    approx_kl=_token_mean(kl_k3(logp_old, logp_new), mask),
    kl_ref=_token_mean(kl_ref, mask),
    ratio_mean=_token_mean(ratio, mask),
  )
  return loss, jax.lax.stop_gradient(metrics)


def update_reference(
  ref_params: PyTree, params: PyTree, alpha: ScalarLike
) -> PyTree:
  """θ_ref ← α·θ + (1 − α)·θ_ref, leaf by leaf, in each leaf's dtype.

  Args:
    ref_params: pytree of reference parameters.
    params: pytree of current parameters, same structure.
    alpha: α ∈ [0, 1]; 1 copies θ (hard reset), 0 keeps θ_ref.

  Returns:
    The new reference pytree.
  """
  checks.in_range("alpha", alpha, 0.0, 1.0)
  return jax.tree.map(
    lambda r, p: (alpha * p + (1 - alpha) * r).astype(r.dtype),
    ref_params,
    params,
  )


def maybe_update_reference(
  ref_params: PyTree,
  params: PyTree,
  step: ScalarLike,
  every: int,
  alpha: ScalarLike,
) -> PyTree:
  """`update_reference` when `step` is a positive multiple of `every`.

  Call it after the optimiser update of iteration `step` (1-based count of
  updates done), so the reference moves after updates M, 2M, … . `step` may
  be traced; the choice is a `jnp.where` per leaf (jit- and vmap-safe).

  Args:
    ref_params: pytree of reference parameters.
    params: pytree of current parameters.
    step: number of updates done so far (int, may be traced).
    every: M ≥ 1 (static).
    alpha: α ∈ [0, 1].

  Returns:
    The (possibly) updated reference pytree.
  """
  checks.positive_int("every", every)
  step = jnp.asarray(step)
  do = (step > 0) & (step % every == 0)
  new = update_reference(ref_params, params, alpha)
  return jax.tree.map(lambda n, r: jnp.where(do, n, r), new, ref_params)
