"""Vision-token pruning inside a decoder: HiDrop, PyramidDrop, FastV.

`VisionSchedule` and its constructors say how many vision tokens each layer
holds; `pruned_forward` runs a `LlamaLM` over `[text | kept vision]` with
late injection, static top-k drops and early exit of the vision stream;
`importance_scores` / `topk_indices` / `soft_topk_mask` are the selection
maths; `prefill_flops_fraction` the analytic prefill cost; `llava_pruned_inputs`
builds the inputs of a LLaVA prompt with persistent positions.
"""

from jaxexit.pruning.forward import (
  SELECTIONS,
  PrunedInputs,
  PrunedOutput,
  pruned_forward,
)
from jaxexit.pruning.kernels import IMPLS
from jaxexit.pruning.prompt import (
  llava_pruned_inputs,
  make_pruned_inputs,
  merged_prompt,
  prompt_positions,
  question_suffix,
)
from jaxexit.pruning.schedule import (
  HIDROP_RELEASED,
  POSITION_MODES,
  SCHEDULES,
  SCORE_LAYERS,
  Stage,
  VisionSchedule,
  fastv_schedule,
  full_schedule,
  hidrop_from_stages,
  hidrop_schedule,
  make_schedule,
  prefill_flops_fraction,
  pyramiddrop_schedule,
)
from jaxexit.pruning.selection import (
  importance_scores,
  soft_topk_mask,
  straight_through_topk_mask,
  topk_indices,
)

__all__ = [
  "HIDROP_RELEASED",
  "IMPLS",
  "POSITION_MODES",
  "SCHEDULES",
  "SCORE_LAYERS",
  "SELECTIONS",
  "PrunedInputs",
  "PrunedOutput",
  "Stage",
  "VisionSchedule",
  "fastv_schedule",
  "full_schedule",
  "hidrop_from_stages",
  "hidrop_schedule",
  "importance_scores",
  "llava_pruned_inputs",
  "make_pruned_inputs",
  "make_schedule",
  "merged_prompt",
  "prefill_flops_fraction",
  "prompt_positions",
  "question_suffix",
  "pruned_forward",
  "pyramiddrop_schedule",
  "soft_topk_mask",
  "straight_through_topk_mask",
  "topk_indices",
]
