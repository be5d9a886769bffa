"""Per-seed records of `python -m experiments.jei_dnn` on CIFAR-10 test.

Exits are decided from cached features (exact: the backbone is frozen):

  full                  the final exit only (the backbone + its probe).
  fixed_exit            every example at warmed-up IM k, k < 4.
  jei_dnn               IMs + gates trained for γ; first c_l ≥ 0.5 (§8.3);
                        `jei_dnn_exact` with the paper's positive weights.
  max_softmax_same_ims  the same IMs as `jei_dnn` at that γ, exits decided
                        by max-softmax thresholds fitted on validation to
                        the exit shares JEI-DNN's gates give validation
                        (MSDNet's fit, §7): same modules and cost, only the
                        exit decision differs.
  max_softmax           MSDNet's budget sweep over r on the default γ's
                        IMs (the curve of the figure).

Every record carries its seed, accuracy, cost, ECE (15 equal-mass bins) and
split-conformal coverage and set size over `cfg.conformal_splits` random
halvings of the test set into calibration and test (mean and 5th
percentile of coverage). JEI-DNN records also carry the diagnostics of gate
collapse: the validation oracle exit shares under γ and the gates'
positive-class weights.

Costs are XLA-counted FLOPs of the live stack (`backbone.exit_flops`).

Axes: Nv / Nt validation / test examples, L exits, C classes.
"""

import jax.numpy as jnp
import numpy as np

from experiments.jei_dnn import configs
from experiments.vision_common import budget_curve, gated_records
from jaxexit.conformal import per_exit_conformal
from jaxexit.exits import budgeted
from jaxexit.methods import jei_dnn


def _probs(logits: np.ndarray) -> np.ndarray:
  z = logits - logits.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _max_softmax(logits: np.ndarray) -> np.ndarray:
  """[N, L] float32 max-softmax, as `thresholds_rule` compares it."""
  return _probs(logits.astype(np.float32)).max(-1).astype(np.float32)


def conformal_over_splits(
  logits: np.ndarray,
  exits: np.ndarray,
  labels: np.ndarray,
  *,
  alpha: float,
  splits: int,
  seed: int,
) -> dict:
  """Split conformal (one q̂ per exit, §8.5) over random test halvings.

  Each split calibrates on a random half of the test set and measures the
  other half.

  Returns:
    {"coverage", "coverage_p5", "set_size"}: mean coverage, its 5th
    percentile over splits, and the mean set size.
  """
  probs = _probs(logits)
  rng = np.random.default_rng(seed)
  n = len(labels)
  coverage, size = [], []
  for _ in range(splits):
    perm = rng.permutation(n)
    cal, test = perm[: n // 2], perm[n // 2 :]
    res = per_exit_conformal(
      probs[cal],
      exits[cal],
      labels[cal],
      probs[test],
      exits[test],
      labels[test],
      alpha=alpha,
    )
    coverage.append(res.coverage)
    size.append(res.mean_set_size)
  return {
    "coverage": float(np.mean(coverage)),
    "coverage_p5": float(np.percentile(coverage, 5)),
    "set_size": float(np.mean(size)),
  }


class SeedEvaluator:
  """Scores one seed's heads on the cached validation and test features."""

  def __init__(self, cfg, seed: int, feats: dict, flops):
    self.cfg, self.seed = cfg, seed
    self.val, self.test = feats["val"], feats["test"]
    self.costs = np.asarray(flops.cumulative, np.float64)
    # A fixed exit pays the layers up to it and its own head only.
    self.fixed_costs = np.cumsum(flops.layer) + np.asarray(flops.head)
    self.full = float(flops.full)
    self.norm_costs = jei_dnn.exit_costs(flops)

  def point(self, method: str, key, logits, exits, costs=None) -> dict:
    """One operating point's record (test exits given; `costs` [L] default
    to the gated stack's cumulative FLOPs)."""
    rec = gated_records(
      method,
      logits,
      self.test.labels,
      np.asarray(exits, np.int32),
      self.costs if costs is None else costs,
      self.full,
      budget_or_threshold=key,
    )[0]
    rec["seed"] = self.seed
    rec.update(
      conformal_over_splits(
        logits,
        np.asarray(exits),
        self.test.labels,
        alpha=self.cfg.alpha,
        splits=self.cfg.conformal_splits,
        seed=self.seed,
      )
    )
    return rec

  def fixed(self, warm: jei_dnn.JeiHeads) -> list[dict]:
    """The final exit alone ("full") and each warmed-up IM alone."""
    out = jei_dnn.jei_outputs(warm, self.test)
    n, num_exits = len(self.test.labels), out.logits.shape[1]
    c = self.fixed_costs
    records = [
      self.point("full", "final", out.logits, np.full(n, num_exits - 1), c)
    ]
    for k in range(num_exits - 1):
      records.append(
        self.point("fixed_exit", f"exit{k}", out.logits, np.full(n, k), c)
      )
    return records

  def _diagnostics(self, heads, val_out, gamma: float, counts: str) -> dict:
    """Gate-collapse evidence on validation under γ: the oracle exit
    shares and the gates' positive weights (counted as `counts`)."""
    logits = jnp.asarray(val_out.logits)
    oracle = jei_dnn.oracle_exit(
      logits[:, :-1],
      logits[:, -1],
      jnp.asarray(self.val.labels),
      jnp.asarray(self.norm_costs, jnp.float32),
      gamma,
    )
    num_exits = val_out.logits.shape[1]
    return {
      "oracle_fractions": (
        np.bincount(np.asarray(oracle), minlength=num_exits) / oracle.size
      ).tolist(),
      "pos_weight": np.asarray(
        jei_dnn.gate_pos_weight(oracle, heads.num_gates, counts)
      ).tolist(),
    }

  def gamma_points(self, gamma: float, heads, counts: str) -> list[dict]:
    """JEI-DNN at γ (gates trained with `counts` weights) and max-softmax
    on the same IMs at the same shares (`configs.method_names`)."""
    names = configs.method_names(counts)
    val_out = jei_dnn.jei_outputs(heads, self.val)
    test_out = jei_dnn.jei_outputs(heads, self.test)
    jei = self.point(names[0], gamma, test_out.logits, test_out.exit_layer)
    jei.update(self._diagnostics(heads, val_out, gamma, counts))
    num_exits = val_out.logits.shape[1]
    shares = np.bincount(val_out.exit_layer, minlength=num_exits)
    shares = shares / shares.sum()
    thresholds = budgeted.fit_thresholds(_max_softmax(val_out.logits), shares)
    test_exit = budgeted.budgeted_exit(
      _max_softmax(test_out.logits), thresholds
    )
    soft = self.point(names[1], gamma, test_out.logits, test_exit)
    soft["thresholds"] = thresholds.tolist()
    return [jei, soft]

  def budget_sweep(self, heads) -> list[dict]:
    """MSDNet's r sweep of max-softmax thresholds on `heads`' IMs."""
    val_out = jei_dnn.jei_outputs(heads, self.val)
    test_out = jei_dnn.jei_outputs(heads, self.test)
    records = budget_curve(
      "max_softmax",
      val_out.logits,
      self.val.labels,
      test_out.logits,
      self.test.labels,
      self.costs,
      self.full,
      self.cfg.r_values,
    )
    for rec in records:
      rec["seed"] = self.seed
    return records


def seed_records(cfg, seed: int, feats: dict, flops, warm, trained) -> list:
  """Every record of one seed (see the module docstring); `trained` maps
  each weight-counts entry to {γ: heads}."""
  ev = SeedEvaluator(cfg, seed, feats, flops)
  records = ev.fixed(warm)
  for counts, by_gamma in trained.items():
    for gamma, heads in by_gamma.items():
      records += ev.gamma_points(gamma, heads, counts)
  headline = trained[cfg.weight_counts[0]]
  records += ev.budget_sweep(headline[cfg.default_gamma])
  return records
