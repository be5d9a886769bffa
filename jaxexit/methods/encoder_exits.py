"""Encoder early-exit methods: heads, training loss and exit rule, by name.

Each `Method` bundles what differs between the papers of encoder_exits.md
(§1: heads, loss over heads, exit rule) so one training loop and one
evaluation serve them all:

  palbert    shared classifier + Lambda layer on [pooled_n; pooled_{n-1}];
             loss Σ_n p_n·ℓ_n + β·KL(p_G‖p) with the ε-floor; Q-exit (§3)
  pondernet  shared classifier + Lambda layer on pooled_n; the same loss;
             sampled exit (§2, PALBERT's PonderNet baseline)
  pabee      per-layer classifiers; loss Σ i·ℓ_i / Σ i; patience (§4)
  deebert    off-ramps; stage 1 CE(final), stage 2 Σ_{i<L} CE_i with the
             backbone and final classifier frozen; entropy threshold (§5)
  berxit     off-ramps + LTE; alternating CE(final) / Σ_{i<L} CE_i, both
             plus MSE(u, 1 − correct); learned exit u < τ (§6)
  static     per-layer classifiers, trained and evaluated at layer L/2
  full       per-layer classifiers, trained and evaluated at the last layer

Per-exit loss ℓ is cross-entropy, or squared error when C = 1 (STS-B).
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxexit import checks, exits
from jaxexit.exits.outputs import ExitHeadOutput
from jaxexit.exits.rules import ExitRule
from jaxexit.models.exit_classifier import ExitHeadsConfig
from jaxexit.typing import Array

# PALBERT's hyper-parameters (encoder_exits.md §3.4).
PALBERT_BETA = 0.5
PALBERT_LAMBDA_P = 0.1
PALBERT_EPS = 0.05
PABEE_REGRESSION_TOL = 0.2  # PALBERT's PABEE copy for STS-B (§4)
DEEBERT_ENTROPIES = (0.0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4,
                     0.5, 0.6, 0.7)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Method:
  """One exit method.

  Attributes:
    name: registry key.
    heads: `num_classes -> ExitHeadsConfig`.
    loss: `(per_layer, labels, step) -> (loss, metrics)`, `per_layer` the
      `ExitHeadOutput` of every layer with leaves `[B, L, ...]`.
    rule: `(param, regression) -> ExitRule` for one point of the sweep.
    exit_layer: `(per_layer, param, key) -> [B]`, the vectorised twin of
      `rule` over every layer's outputs at once (sweeps evaluate one
      `simulate` pass against many parameters without recompiling).
    sweep: `num_layers -> params` evaluated for the score/depth curve.
    default: `num_layers -> param`, the paper's operating point.
    stages: training stages (DeeBERT: 2).
    trainable: `stage -> path predicate or None` (None: everything trains).
    rule_needs_key: the rule takes a PRNG key as `rule_inputs` (PonderNet).
  """

  name: str
  heads: Callable[[int], ExitHeadsConfig]
  loss: Callable[..., tuple[Array, dict]]
  rule: Callable[[Any, bool], ExitRule]
  exit_layer: Callable[..., Array]
  sweep: Callable[[int], tuple]
  default: Callable[[int], Any]
  stages: int = 1
  trainable: Callable[[int], Callable[[str], bool] | None] = lambda stage: None
  rule_needs_key: bool = False


def per_exit_loss(logits: Array, labels: Array) -> Array:
  """[B, L] cross-entropy, or squared error when logits are [B, L, 1]."""
  if logits.shape[-1] == 1:
    return (logits[..., 0] - labels[:, None].astype(jnp.float32)) ** 2
  return exits.cross_entropy_per_exit(logits, labels)


def _ponder_loss(per_layer: ExitHeadOutput, labels, step):
  del step
  num_layers = per_layer.halt.shape[-1]
  ell = per_exit_loss(per_layer.logits, labels)
  p = exits.epsilon_floor(exits.halting_distribution(per_layer.halt),
                          PALBERT_EPS)
  prior = exits.truncated_geometric_prior(PALBERT_LAMBDA_P, num_layers)
  loss = exits.ponder_loss(ell, p, prior, PALBERT_BETA)
  depth = jnp.arange(1, num_layers + 1, dtype=jnp.float32)[None, :]
  expected = jnp.sum(p * depth, -1) / jnp.sum(p, -1)
  return loss, {"task_loss": exits.ponder_task_loss(ell, p),
                "expected_depth": jnp.mean(expected)}


def _weighted_loss(weights_fn):
  def loss(per_layer, labels, step):
    del step
    ell = per_exit_loss(per_layer.logits, labels)
    return exits.weighted_exit_loss(ell, weights_fn(ell.shape[-1])), {}
  return loss


def _one_exit(layer_fn):
  """Weights 1 at `layer_fn(L)` (0-based), 0 elsewhere."""
  return _weighted_loss(
      lambda n: jax.nn.one_hot(layer_fn(n), n, dtype=jnp.float32))


def _internal_sum(ell: Array) -> Array:
  """Σ_{i<L} mean_b ℓ_i (DeeBERT/BERxiT off-ramp loss)."""
  return jnp.sum(jnp.mean(ell[:, :-1], axis=0))


def _deebert_loss(per_layer, labels, step, *, stage):
  del step
  ell = per_exit_loss(per_layer.logits, labels)
  if stage == 0:
    return jnp.mean(ell[:, -1]), {}
  return _internal_sum(ell), {}


def _berxit_loss(per_layer, labels, step):
  ell = per_exit_loss(per_layer.logits, labels)
  regression = per_layer.logits.shape[-1] == 1
  target = exits.lte_targets(
      per_layer.logits[..., 0] if regression else per_layer.logits, labels,
      regression=regression)
  lte = jnp.mean((per_layer.score - target) ** 2)
  # Alternating fine-tuning: even steps train the final exit, odd steps the
  # internal off-ramps; the LTE head trains on both.
  even = jnp.asarray(step) % 2 == 0
  task = jnp.where(even, jnp.mean(ell[:, -1]), _internal_sum(ell))
  return task + lte, {"lte_loss": lte}


def _regression_or_logits(logits: Array) -> Array:
  """[B, L] regression outputs when C = 1, else the [B, L, C] logits."""
  return logits[..., 0] if logits.shape[-1] == 1 else logits


def _half(num_layers: int) -> int:
  return max(1, num_layers // 2)


def _heads(**kw):
  return lambda num_classes: ExitHeadsConfig(num_classes=num_classes, **kw)


def _last(per_layer: ExitHeadOutput) -> int:
  return per_layer.logits.shape[1] - 1


METHODS: dict[str, Method] = {m.name: m for m in [
    Method(name="palbert",
           heads=_heads(classifier="shared", halting="linear_cat",
                        halting_layers=3),
           loss=_ponder_loss, rule=lambda q, _: exits.q_exit_rule(q),
           exit_layer=lambda o, q, key: exits.q_exit(
               exits.halting_distribution(o.halt), q),
           sweep=lambda n: (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
           default=lambda n: 0.5),
    Method(name="pondernet",
           heads=_heads(classifier="shared", halting="linear",
                        halting_layers=1),
           loss=_ponder_loss, rule=lambda *_: exits.sampled_exit_rule(),
           exit_layer=lambda o, _, key: exits.sampled_exit(key, o.halt),
           sweep=lambda n: (0,), default=lambda n: 0, rule_needs_key=True),
    Method(name="pabee", heads=_heads(classifier="per_layer"),
           loss=_weighted_loss(exits.pabee_weights),
           rule=lambda t, regression: exits.patience_rule(
               t, regression_tol=PABEE_REGRESSION_TOL if regression else None),
           exit_layer=lambda o, t, key: exits.patience_exit(
               _regression_or_logits(o.logits), t,
               regression_tol=PABEE_REGRESSION_TOL if o.logits.shape[-1] == 1
               else None),
           sweep=lambda n: tuple(range(1, n)), default=_half),
    Method(name="deebert", heads=_heads(classifier="offramp"),
           loss=_deebert_loss, rule=lambda s, _: exits.entropy_rule(s),
           exit_layer=lambda o, s, key: exits.entropy_exit(o.logits, s),
           sweep=lambda n: DEEBERT_ENTROPIES, default=lambda n: 0.3,
           stages=2,
           trainable=lambda stage: (None if stage == 0 else
                                    (lambda path: path.startswith("heads/")))),
    Method(name="berxit",
           heads=_heads(classifier="offramp", learned_exit=True),
           loss=_berxit_loss, rule=lambda tau, _: exits.learned_exit_rule(tau),
           exit_layer=lambda o, tau, key: exits.learned_exit(o.score, tau),
           sweep=lambda n: (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
           default=lambda n: 0.5),
    Method(name="static", heads=_heads(classifier="per_layer"),
           loss=_one_exit(lambda n: _half(n) - 1),
           rule=lambda k, _: exits.fixed_depth(k),
           exit_layer=lambda o, k, key: jnp.full(o.logits.shape[:1], k - 1,
                                                 jnp.int32),
           sweep=lambda n: (_half(n),), default=_half),
    Method(name="full", heads=_heads(classifier="per_layer"),
           loss=_one_exit(lambda n: n - 1), rule=lambda *_: exits.never(),
           exit_layer=lambda o, _, key: jnp.full(o.logits.shape[:1], _last(o),
                                                 jnp.int32),
           sweep=lambda n: (None,), default=lambda n: None),
]}


def get_method(name: str) -> Method:
  """The method registered as `name`."""
  checks.one_of("method", name, list(METHODS))
  return METHODS[name]


def method_loss(method: Method, stage: int):
  """The loss of `method` in training stage `stage` (0-based)."""
  if method.name == "deebert":
    return lambda per_layer, labels, step: _deebert_loss(
        per_layer, labels, step, stage=stage)
  return method.loss
