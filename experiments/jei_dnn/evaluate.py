"""Records of `python -m experiments.jei_dnn`: accuracy, cost, ECE, conformal
sets and realised speed-ups of every method on CIFAR-10 test.

Exits are decided from cached features (exact: the backbone is frozen):

  full          the backbone head only (cost = the bare backbone).
  fixed_exit    every example at IM k, k < L − 1 (blocks 0..k + IM k).
  max_softmax   warmed-up IMs + backbone head, MSDNet budgeted thresholds
                fitted on the validation split, one record per r (§7).
  jei_dnn       IMs + gates trained for γ, first c_l ≥ 0.5, one per γ.

Costs are XLA-counted FLOPs (`execution.exit_flops`) of the ViT + JEI heads
stack: exiting at l pays blocks 0..l and every IM + gate on the way.
Realised speed-ups time the rule on the same stack against the full
backbone: `compacted` at the eval batch size and `early_stop` at batch 1.
"""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.jei_dnn import run
from experiments.vision_common import (
  budget_curve,
  fixed_exit_records,
  gated_records,
)
from jaxexit import execution
from jaxexit.calibration import reliability_bins
from jaxexit.conformal import per_exit_conformal
from jaxexit.exits import budgeted, confidence, gates, rules
from jaxexit.methods import jei_dnn


def _probs(logits: np.ndarray) -> np.ndarray:
  z = logits - logits.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _conformal(
  rec: dict,
  cfg,
  val_logits,
  val_exit,
  val_labels,
  test_logits,
  test_exit,
  test_labels,
) -> None:
  res = per_exit_conformal(
    _probs(val_logits),
    val_exit,
    val_labels,
    _probs(test_logits),
    test_exit,
    test_labels,
    alpha=cfg.alpha,
  )
  rec.update(
    coverage=res.coverage, mean_set_size=res.mean_set_size, alpha=cfg.alpha
  )


def _reliability(logits: np.ndarray, exit_layer: np.ndarray, labels):
  p = _probs(np.take_along_axis(logits, exit_layer[:, None, None], 1)[:, 0])
  return reliability_bins(p.max(-1), p.argmax(-1) == labels, num_bins=15)


class Timer:
  """Times exit rules on the ViT + JEI heads stack against the backbone."""

  def __init__(self, model, heads, test_images: np.ndarray, cfg):
    self.stack, self.params = model.exit_stack(heads)
    self.cfg = cfg
    size, b = model.cfg.image_size, cfg.eval_batch_size
    embed = nnx.jit(lambda m, x: m.embed(run.model_inputs(x, size)))
    self.big = [
      embed(model, jnp.asarray(test_images[i * b : (i + 1) * b]))
      for i in range(cfg.timing_batches)
    ]
    self.one = [
      embed(model, jnp.asarray(test_images[i : i + 1]))
      for i in range(cfg.batch1_examples)
    ]

  def flops(self) -> execution.ExitFlops:
    return execution.exit_flops(self.stack, self.params, self.one[0])

  def speedups(self, heads, rule: rules.ExitRule, inputs=None) -> dict:
    """realised_speedup (compacted) and realised_speedup_batch1."""
    params = {**self.params, "exits": nnx.state(heads)}
    out = {}
    for key, mode, batches in (
      ("realised_speedup", "compacted", self.big),
      ("realised_speedup_batch1", "early_stop", self.one),
    ):
      rep = execution.measure_speedup(
        self.stack,
        rule,
        params,
        batches,
        mode=mode,
        rule_inputs=None
        if inputs is None
        else [inputs(c["h"].shape[0]) for c in batches],
        repeats=self.cfg.timing_repeats,
      )
      out[key] = rep.realised_speedup
    return out


def _full_and_fixed(cfg, flops, warm_test, warm_val, labels, timer, warm):
  """The backbone alone, then each fixed IM exit."""
  num_exits = flops.layer.size
  fixed_costs = np.cumsum(flops.layer) + flops.head  # one head, no others
  records, rule = [], rules.preset_depth()
  for rec in (
    gated_records(
      "full",
      warm_test.logits,
      labels["test"],
      np.full(labels["test"].shape, num_exits - 1),
      fixed_costs,
      flops.full,
    )
    + fixed_exit_records(
      "fixed_exit", warm_test.logits, labels["test"], fixed_costs, flops.full
    )[:-1]
  ):
    k = (
      num_exits - 1
      if rec["method"] == "full"
      else int(rec["budget_or_threshold"][4:])
    )
    _conformal(
      rec,
      cfg,
      warm_val.logits,
      np.full(labels["val"].shape, k),
      labels["val"],
      warm_test.logits,
      np.full(labels["test"].shape, k),
      labels["test"],
    )
    if rec["method"] == "full":  # the baseline of every timing: 1 by design
      rec.update(realised_speedup=1.0, realised_speedup_batch1=1.0)
    else:
      rec.update(
        timer.speedups(
          warm, rule, lambda b, k=k: jnp.full((b,), k + 1, jnp.int32)
        )
      )
    records.append(rec)
  return records


def _max_softmax(cfg, flops, warm_test, warm_val, labels, timer, warm):
  records = budget_curve(
    "max_softmax",
    warm_val.logits,
    labels["val"],
    warm_test.logits,
    labels["test"],
    flops.cumulative,
    flops.full,
    cfg.r_values,
  )
  val_conf = np.asarray(confidence.max_softmax(jnp.asarray(warm_val.logits)))
  test_conf = np.asarray(confidence.max_softmax(jnp.asarray(warm_test.logits)))
  rule, exits = budgeted.thresholds_input_rule(), {}
  for rec in records:
    t = np.asarray(rec["thresholds"])
    val_exit = budgeted.budgeted_exit(val_conf, t)
    exits[rec["budget_or_threshold"]] = budgeted.budgeted_exit(test_conf, t)
    _conformal(
      rec,
      cfg,
      warm_val.logits,
      val_exit,
      labels["val"],
      warm_test.logits,
      exits[rec["budget_or_threshold"]],
      labels["test"],
    )
    rec.update(
      timer.speedups(warm, rule, lambda b, t=t: jnp.asarray(t, jnp.float32))
    )
  return records, exits


def _jei(cfg, flops, trained, feats, labels, timer):
  records, outputs, rule = [], {}, gates.jei_gate_rule()
  for gamma, heads in trained.items():
    test = jei_dnn.jei_outputs(heads, feats["test"])
    val = jei_dnn.jei_outputs(heads, feats["val"])
    rec = gated_records(
      "jei_dnn",
      test.logits,
      labels["test"],
      test.exit_layer,
      flops.cumulative,
      flops.full,
      budget_or_threshold=float(gamma),
    )[0]
    _conformal(
      rec,
      cfg,
      val.logits,
      val.exit_layer,
      labels["val"],
      test.logits,
      test.exit_layer,
      labels["test"],
    )
    rec.update(timer.speedups(heads, rule))
    records.append(rec)
    outputs[gamma] = test
  return records, outputs


def evaluate(cfg, model, warm, trained, feats, timer: Timer, flops):
  """(records, reliability bins of one JEI-DNN and one max-softmax point)."""
  labels = {k: feats[k].labels for k in ("val", "test")}
  warm_test = jei_dnn.jei_outputs(warm, feats["test"])
  warm_val = jei_dnn.jei_outputs(warm, feats["val"])
  fixed = _full_and_fixed(cfg, flops, warm_test, warm_val, labels, timer, warm)
  soft, soft_exits = _max_softmax(
    cfg, flops, warm_test, warm_val, labels, timer, warm
  )
  jei, jei_outputs = _jei(cfg, flops, trained, feats, labels, timer)
  # Representative points: the JEI-DNN γ nearest 0.6 of the full cost (the
  # paper's 0.5–0.75 range) and the max-softmax r nearest it in cost.
  rep = min(jei, key=lambda r: abs(r["flops_fraction"] - 0.6))
  near = min(
    soft, key=lambda r: abs(r["flops_fraction"] - rep["flops_fraction"])
  )
  out = jei_outputs[rep["budget_or_threshold"]]
  reliability = {
    f"jei_dnn γ={rep['budget_or_threshold']:g}": _reliability(
      out.logits, out.exit_layer, labels["test"]
    ),
    f"max_softmax r={near['budget_or_threshold']:g}": _reliability(
      warm_test.logits, soft_exits[near["budget_or_threshold"]], labels["test"]
    ),
  }
  return fixed + soft + jei, reliability
