"""Exit maths: pure, static-shape functions and incremental exit rules.

Vectorised rules take every layer at once (`[*b, L]` signals, `[*b, L, C]`
logits) and return a 0-based exit layer per example; each has an
`ExitRule` twin that decides one layer at a time for the execution modes.
"""

from jaxexit.exits.budgeted import (
  DYN_PERCEIVER_R_VALUES,
  DYN_PERCEIVER_RESCALE,
  budgeted_exit,
  distribution_for_budget,
  fit_thresholds,
  geometric_exit_distribution,
  thresholds_input_rule,
  thresholds_rule,
)
from jaxexit.exits.confidence import (
  cosine_rule,
  entropy,
  entropy_exit,
  entropy_rule,
  hidden_cosine,
  margin,
  margin_rule,
  max_softmax,
  max_softmax_exit,
  max_softmax_rule,
  patience_exit,
  patience_rule,
  uncertainty_features,
)
from jaxexit.exits.gates import (
  jei_exit,
  jei_exit_probabilities,
  jei_gate_rule,
  jei_gate_targets,
  jei_oracle_exit,
  learned_exit,
  learned_exit_rule,
  lte_targets,
  score_rule,
)
from jaxexit.exits.halting import (
  PRIOR_SETTINGS,
  depth_matched_lambda_p,
  epsilon_floor,
  halting_distribution,
  kl_divergence,
  ponder_kl,
  ponder_task_loss,
  prior_lambda_p,
  q_exit,
  q_exit_rule,
  sampled_exit,
  sampled_exit_rule,
  truncated_geometric_prior,
)
from jaxexit.exits.losses import (
  cross_entropy_per_exit,
  kl_self_distillation,
  pabee_weights,
  ponder_loss,
  uniform_weights,
  weighted_exit_loss,
)
from jaxexit.exits.outputs import ExitHeadOutput
from jaxexit.exits.rules import (
  ExitRule,
  always,
  at_least,
  fixed_depth,
  memoryless,
  never,
  preset_depth,
)
from jaxexit.exits.select import first_exit, layers_used, take_at_exit
