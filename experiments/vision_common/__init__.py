"""Shared evaluation for the vision early-exit experiments.

`curves` turns per-exit logits into accuracy-vs-FLOPs records (MSDNet
budgeted thresholds, fixed exits, externally gated exits); `results` writes
them as results.json, results.md and curve.png (`plots`). Used by
`experiments.jei_dnn` and `experiments.dynamic_perceiver`.
"""

from experiments.vision_common.curves import (
  budget_curve,
  fixed_exit_records,
  gated_records,
)
from experiments.vision_common.plots import curve_figure
from experiments.vision_common.results import RESULT_FIELDS, write_results
