"""Realised speed-ups of JEI-DNN's operating points, backbone included.

The live stack (`backbone.LiteJeiModel.exit_stack`) runs the ImageNet
EfficientNet-Lite on resized test images, with the IM/gate heads after each
stage and the probe after the head. Each operating point is timed against
the plain backbone + probe in the same run (`execution.measure_speedup`,
medians after a warm-up round): `compacted` at batch `cfg.timing_batch`
and `early_stop` at batch 1. The theoretical speed-up is the FLOPs one,
1 / flops_fraction of the point on the whole test set.
"""

import jax.numpy as jnp
import numpy as np

from experiments.jei_dnn import backbone
from jaxexit import execution
from jaxexit.exits import budgeted, gates


class Timer:
  """Times exit rules on one seed's live stack."""

  def __init__(self, cfg, model: backbone.LiteJeiModel, images: np.ndarray):
    self.cfg, self.model = cfg, model
    b, r = cfg.timing_batch, cfg.resolution
    self.big = [
      model.init_carry(images[i * b : (i + 1) * b], r)
      for i in range(cfg.timing_batches)
    ]
    self.one = [
      model.init_carry(images[i : i + 1], r) for i in range(cfg.batch1_examples)
    ]

  def _measure(self, rule, rule_input=None) -> dict:
    stack, params = self.model.exit_stack()
    out = {}
    for name, mode, batches in (
      ("compacted", "compacted", self.big),
      ("early_stop_batch1", "early_stop", self.one),
    ):
      rep = execution.measure_speedup(
        stack,
        rule,
        params,
        batches,
        mode=mode,
        rule_inputs=None
        if rule_input is None
        else [rule_input for _ in batches],
        repeats=self.cfg.timing_repeats,
      )
      out[f"realised_speedup_{name}"] = rep.realised_speedup
      out[f"seconds_full_{name}"] = rep.full_seconds
      out[f"seconds_{name}"] = rep.mode_seconds
    return out

  def jei(self, heads) -> dict:
    """JEI-DNN's gates (first c_l ≥ 0.5) with `heads`."""
    self.model.heads = heads
    return self._measure(gates.jei_gate_rule())

  def max_softmax(self, heads, thresholds) -> dict:
    """Max-softmax thresholds [L] on `heads`' IMs."""
    self.model.heads = heads
    t = jnp.asarray(np.asarray(thresholds, np.float32))
    return self._measure(budgeted.thresholds_input_rule(), t)


def speed_rows(points: list[tuple[dict, dict]]) -> list[dict]:
  """One row per (record, timing): realised vs theoretical (FLOPs)."""
  rows = []
  for rec, timing in points:
    theory = 1.0 / rec["flops_fraction"]
    row = {
      "method": rec["method"],
      "budget_or_threshold": rec["budget_or_threshold"],
      "flops_fraction": rec["flops_fraction"],
      "theoretical_speedup": theory,
      **timing,
    }
    for name in ("compacted", "early_stop_batch1"):
      row[f"ratio_{name}"] = timing[f"realised_speedup_{name}"] / theory
    rows.append(row)
  return rows
