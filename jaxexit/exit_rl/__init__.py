"""ExIt (Jiang, Lupu & Bachrach, 2025): self-improvement task spaces for RL.

Pure, fixed-shape functions (jit- and vmap-safe): learnability scores, step
rewards, the diversity bonus, the top-N task buffer and episode plumbing.
"""

from jaxexit.exit_rl.buffer import (BufferConfig, TaskBuffer, buffer_size,
                                    buffer_stats, init_buffer, insert_batch,
                                    replay_probs, sample, update_scores)
from jaxexit.exit_rl.diversity import diversity_coefficients
from jaxexit.exit_rl.episodes import (MODE_BASE, MODE_DIVERGE, MODE_IMPROVE,
                                      Candidates, Starts, base_candidates,
                                      expand_children, expand_prefixes,
                                      flatten_turns, insert_candidates,
                                      select_starts, update_buffer)
from jaxexit.exit_rl.learnability import (SCORE_NORMS, group_learnability,
                                          normalize_scores)
from jaxexit.exit_rl.rewards import IMPROVE_REWARDS, improvement_reward
