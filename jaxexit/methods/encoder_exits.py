"""Encoder early-exit methods: heads, training loss and exit rule, by name.

Each `Method` bundles what differs between the papers of encoder_exits.md
(§1: heads, loss over heads, exit rule) so one training loop and one
evaluation serve them all. One builder function per method:

  palbert            shared classifier + Lambda layer on [pooled_n;
                     pooled_{n-1}]; loss Σ_n p_n·ℓ_n + β·KL(p_G‖p) with the
                     ε-floor; Q-exit (§3)
  palbert_per_layer  the same with a classifier per layer: PALBERT's shared
                     head suits ALBERT, whose layers share weights, not an
                     encoder whose layers do not (e.g. MiniLM)
  pondernet          shared classifier + Lambda layer on pooled_n; the same
                     loss; sampled exit (§2, PALBERT's PonderNet baseline)
  pabee              per-layer classifiers; loss Σ i·ℓ_i / Σ i; patience (§4)
  deebert            off-ramps; stage 1 CE(final), stage 2 Σ_{i<L} CE_i with
                     the backbone and final classifier frozen; entropy
                     threshold in units of ln C (§5)
  berxit             off-ramps + LTE; alternating CE(final) / Σ_{i<L} CE_i,
                     both plus MSE(u, 1 − correct); learned exit u < τ (§6)
  static             per-layer classifiers, trained and evaluated at L/2
  full               per-layer classifiers, trained and evaluated at layer L

Per-exit loss ℓ is cross-entropy, or squared error when C = 1 (STS-B).

The prior of the PonderNet-style methods is named by `prior`:
"depth_matched" (default) carries the paper's λ_p = 0.1 at 12 layers over to
the encoder's depth (`exits.depth_matched_lambda_p`: 0.19 at 6 layers), and
"paper" keeps the literal 0.1, whose median on 6 layers is the last layer.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxexit import checks, exits
from jaxexit.exits.outputs import ExitHeadOutput
from jaxexit.exits.rules import ExitRule
from jaxexit.models.exit_classifier import EncoderExitHeadsConfig
from jaxexit.typing import Array

# PALBERT's hyper-parameters (encoder_exits.md §3.4).
PALBERT_BETA = 0.5
PALBERT_EPS = 0.05
PABEE_REGRESSION_TOL = 0.2  # PALBERT's PABEE copy for STS-B (§4)
# DeeBERT's entropy thresholds as fractions of ln C, the entropy of the
# uniform prediction (a fraction ≥ 1 exits everything at the first layer).
DEEBERT_ENTROPY_FRACTIONS = (
  0.005,
  0.01,
  0.02,
  0.05,
  0.1,
  0.15,
  0.2,
  0.3,
  0.4,
  0.5,
  0.6,
  0.7,
  0.8,
  0.9,
)
Q_SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
TAU_SWEEP = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Method:
  """One exit method.

  Attributes:
    name: registry key.
    heads: `num_classes -> EncoderExitHeadsConfig`.
    loss: `(per_layer, labels, step, stage) -> (loss, metrics)`,
      `per_layer` the `ExitHeadOutput` of every layer with leaves
      `[B, L, ...]`, `stage` the 0-based training stage.
    rule: `(param, num_classes) -> ExitRule` for one point of the sweep.
    exit_layer: `(per_layer, param, key) -> [B]`, the vectorised twin of
      `rule` over every layer's outputs at once (sweeps evaluate one
      `simulate` pass against many parameters without recompiling).
    sweep: `num_layers -> params` evaluated for the score/depth curve.
    paper_default: `num_layers -> param`, the paper's operating point
      (experiments choose theirs on held-out data).
    stages: training stages (DeeBERT: 2).
    trainable: `stage -> path predicate or None` (None: everything trains).
    rule_needs_key: the rule takes a PRNG key as `rule_inputs` (PonderNet).
    fixed_depth: every example exits at the same layer by construction
      (static, full), so a single exit layer is not a collapse.
  """

  name: str
  heads: Callable[[int], EncoderExitHeadsConfig]
  loss: Callable[..., tuple[Array, dict]]
  rule: Callable[[Any, int], ExitRule]
  exit_layer: Callable[..., Array]
  sweep: Callable[[int], tuple]
  paper_default: Callable[[int], Any]
  stages: int = 1
  trainable: Callable[[int], Callable[[str], bool] | None] = lambda stage: None
  rule_needs_key: bool = False
  fixed_depth: bool = False


def per_exit_loss(logits: Array, labels: Array) -> Array:
  """[B, L] cross-entropy, or squared error when logits are [B, L, 1]."""
  if logits.shape[-1] == 1:
    return (logits[..., 0] - labels[:, None].astype(jnp.float32)) ** 2
  return exits.cross_entropy_per_exit(logits, labels)


def _ponder_loss(prior: str):
  """Σ p_n·ℓ_n + β·KL(p_G‖p) with the ε-floor (§3.2), prior by name."""

  def loss(per_layer: ExitHeadOutput, labels, step, stage):
    del step, stage
    num_layers = per_layer.halt.shape[-1]
    ell = per_exit_loss(per_layer.logits, labels)
    p = exits.epsilon_floor(
      exits.halting_distribution(per_layer.halt), PALBERT_EPS
    )
    lambda_p = exits.prior_lambda_p(prior, num_layers)
    prior_p = exits.truncated_geometric_prior(lambda_p, num_layers)
    total = exits.ponder_loss(ell, p, prior_p, PALBERT_BETA)
    depth = jnp.arange(1, num_layers + 1, dtype=jnp.float32)[None, :]
    expected = jnp.sum(p * depth, -1) / jnp.sum(p, -1)
    return total, {
      "task_loss": exits.ponder_task_loss(ell, p),
      "expected_depth": jnp.mean(expected),
      "expected_depth_std": jnp.std(expected),
    }

  return loss


def _weighted_loss(weights_fn):
  def loss(per_layer, labels, step, stage):
    del step, stage
    ell = per_exit_loss(per_layer.logits, labels)
    return exits.weighted_exit_loss(ell, weights_fn(ell.shape[-1])), {}

  return loss


def _one_exit(layer_fn):
  """Weights 1 at `layer_fn(L)` (0-based), 0 elsewhere."""
  return _weighted_loss(
    lambda n: jax.nn.one_hot(layer_fn(n), n, dtype=jnp.float32)
  )


def _internal_sum(ell: Array) -> Array:
  """Σ_{i<L} mean_b ℓ_i (DeeBERT/BERxiT off-ramp loss)."""
  return jnp.sum(jnp.mean(ell[:, :-1], axis=0))


def _deebert_loss(per_layer, labels, step, stage):
  del step
  ell = per_exit_loss(per_layer.logits, labels)
  if stage == 0:
    return jnp.mean(ell[:, -1]), {}
  return _internal_sum(ell), {}


def _berxit_loss(per_layer, labels, step, stage):
  del stage
  ell = per_exit_loss(per_layer.logits, labels)
  regression = per_layer.logits.shape[-1] == 1
  target = exits.lte_targets(
    per_layer.logits[..., 0] if regression else per_layer.logits,
    labels,
    regression=regression,
  )
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
  return lambda num_classes: EncoderExitHeadsConfig(
    num_classes=num_classes, **kw
  )


def _last(per_layer: ExitHeadOutput) -> int:
  return per_layer.logits.shape[1] - 1


def entropy_threshold(fraction: float, num_classes: int) -> float:
  """DeeBERT's entropy threshold S = fraction · ln C (C ≥ 2)."""
  if num_classes < 2:
    raise ValueError(
      "entropy exits need num_classes >= 2; got "
      f"num_classes={num_classes} (regression)"
    )
  return fraction * math.log(num_classes)


def palbert(
  *, prior: str = "depth_matched", classifier: str = "shared"
) -> Method:
  """PALBERT (§3): Lambda layer on [pooled_n; pooled_{n−1}], Q-exit."""
  checks.one_of("prior", prior, exits.PRIOR_SETTINGS)
  name = "palbert" if classifier == "shared" else f"palbert_{classifier}"
  return Method(
    name=name,
    heads=_heads(classifier=classifier, halting="linear_cat", halting_layers=3),
    loss=_ponder_loss(prior),
    rule=lambda q, _: exits.q_exit_rule(q),
    exit_layer=lambda o, q, key: exits.q_exit(
      exits.halting_distribution(o.halt), q
    ),
    sweep=lambda n: Q_SWEEP,
    paper_default=lambda n: 0.5,
  )


def pondernet(*, prior: str = "depth_matched") -> Method:
  """PALBERT's PonderNet baseline (§2): Lambda on pooled_n, sampled exit."""
  checks.one_of("prior", prior, exits.PRIOR_SETTINGS)
  return Method(
    name="pondernet",
    heads=_heads(classifier="shared", halting="linear", halting_layers=1),
    loss=_ponder_loss(prior),
    rule=lambda *_: exits.sampled_exit_rule(),
    exit_layer=lambda o, _, key: exits.sampled_exit(key, o.halt),
    sweep=lambda n: (0,),
    paper_default=lambda n: 0,
    rule_needs_key=True,
  )


def pabee(**_) -> Method:
  """PABEE (§4): per-layer classifiers, patience."""

  def tol(num_classes):
    return PABEE_REGRESSION_TOL if num_classes == 1 else None

  return Method(
    name="pabee",
    heads=_heads(classifier="per_layer"),
    loss=_weighted_loss(exits.pabee_weights),
    rule=lambda t, c: exits.patience_rule(t, regression_tol=tol(c)),
    exit_layer=lambda o, t, key: exits.patience_exit(
      _regression_or_logits(o.logits), t, regression_tol=tol(o.logits.shape[-1])
    ),
    sweep=lambda n: tuple(range(1, n)),
    paper_default=_half,
  )


def deebert(**_) -> Method:
  """DeeBERT (§5): off-ramps, two stages, entropy < fraction · ln C."""
  return Method(
    name="deebert",
    heads=_heads(classifier="offramp"),
    loss=_deebert_loss,
    rule=lambda f, c: exits.entropy_rule(entropy_threshold(f, c)),
    exit_layer=lambda o, f, key: exits.entropy_exit(
      o.logits, entropy_threshold(f, o.logits.shape[-1])
    ),
    sweep=lambda n: DEEBERT_ENTROPY_FRACTIONS,
    paper_default=lambda n: 0.4,
    stages=2,
    trainable=lambda stage: (
      None if stage == 0 else (lambda path: path.startswith("heads/"))
    ),
  )


def berxit(**_) -> Method:
  """BERxiT (§6): off-ramps + learned-to-exit head, exit when u < τ."""
  return Method(
    name="berxit",
    heads=_heads(classifier="offramp", learned_exit=True),
    loss=_berxit_loss,
    rule=lambda tau, _: exits.learned_exit_rule(tau),
    exit_layer=lambda o, tau, key: exits.learned_exit(o.score, tau),
    sweep=lambda n: TAU_SWEEP,
    paper_default=lambda n: 0.5,
  )


def static(**_) -> Method:
  """A static model trained and evaluated at layer L/2."""
  return Method(
    name="static",
    heads=_heads(classifier="per_layer"),
    loss=_one_exit(lambda n: _half(n) - 1),
    rule=lambda k, _: exits.fixed_depth(k),
    exit_layer=lambda o, k, key: jnp.full(o.logits.shape[:1], k - 1, jnp.int32),
    sweep=lambda n: (_half(n),),
    paper_default=_half,
    fixed_depth=True,
  )


def full(**_) -> Method:
  """The full model: trained and evaluated at the last layer."""
  return Method(
    name="full",
    heads=_heads(classifier="per_layer"),
    loss=_one_exit(lambda n: n - 1),
    rule=lambda *_: exits.never(),
    exit_layer=lambda o, _, key: jnp.full(
      o.logits.shape[:1], _last(o), jnp.int32
    ),
    sweep=lambda n: (None,),
    paper_default=lambda n: None,
    fixed_depth=True,
  )


def palbert_per_layer(*, prior: str = "depth_matched") -> Method:
  """PALBERT with a classifier per layer instead of one shared (§3.1)."""
  return palbert(prior=prior, classifier="per_layer")


METHODS: dict[str, Callable[..., Method]] = {
  "palbert": palbert,
  "palbert_per_layer": palbert_per_layer,
  "pondernet": pondernet,
  "pabee": pabee,
  "deebert": deebert,
  "berxit": berxit,
  "static": static,
  "full": full,
}


def get_method(name: str, *, prior: str = "depth_matched") -> Method:
  """The method registered as `name`.

  Args:
    name: a key of `METHODS`.
    prior: the PonderNet prior setting of palbert*/pondernet, one of
      `exits.PRIOR_SETTINGS` (ignored by the other methods).
  """
  checks.one_of("method", name, list(METHODS))
  checks.one_of("prior", prior, exits.PRIOR_SETTINGS)
  return METHODS[name](prior=prior)
