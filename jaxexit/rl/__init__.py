"""Generic RL maths for language-model policies (pure, jit- and vmap-safe)."""

from jaxexit.rl.grpo import (
  LOSS_AGGS,
  REWARD_SCALES,
  GRPOConfig,
  group_advantages,
  group_center,
  grpo_loss,
  kl_k3,
  maybe_update_reference,
  update_reference,
)
