"""ExIt (Jiang, Lupu & Bachrach, 2025): self-improvement task spaces for RL.

Pure, fixed-shape functions (jit- and vmap-safe): learnability scores, step
rewards, the diversity bonus, the top-N task buffer and episode plumbing;
the synthetic domains (`domains`), the tiny policy and its sampler
(`policy`), the supervised warm start, the training loop (`train`) and the
K-step self-improvement evaluation (`k_step`). Functions named like their
module (`train.train`, `warm_start.warm_start`, `k_step.k_step`) are imported
from the module.
"""

from jaxexit.exploratory_iteration.buffer import (
  BufferConfig,
  TaskBuffer,
  buffer_size,
  buffer_stats,
  init_buffer,
  insert_batch,
  replay_probs,
  sample,
  update_scores,
)
from jaxexit.exploratory_iteration.diversity import diversity_coefficients
from jaxexit.exploratory_iteration.episodes import (
  MODE_BASE,
  MODE_DIVERGE,
  MODE_IMPROVE,
  Candidates,
  Starts,
  base_candidates,
  expand_children,
  expand_prefixes,
  flatten_turns,
  insert_candidates,
  select_starts,
  update_buffer,
)
from jaxexit.exploratory_iteration.learnability import (
  SCORE_NORMS,
  group_learnability,
  normalize_scores,
)
from jaxexit.exploratory_iteration.rewards import (
  IMPROVE_REWARDS,
  improvement_reward,
)
from jaxexit.exploratory_iteration.domains import Domain, make_domain
from jaxexit.exploratory_iteration.k_step import KStepResult, k_step_eval
from jaxexit.exploratory_iteration.policy import (
  PolicyConfig,
  make_policy,
  policy_graphdef,
  response_logprobs,
  sample_responses,
)
from jaxexit.exploratory_iteration.train import (
  METHODS,
  ExItConfig,
  seed_keys,
  train_iteration,
)
