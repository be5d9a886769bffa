"""JEI-DNN: jointly learned inference modules and exit gates on a frozen ViT.

Paper: Regol, Chataoui, Coates, "Jointly-Learned Exit and Inference for a
Dynamic Neural Network" (ICLR 2024); spec `encoder_exits.md` §8, pitfalls
§12.8–9. The exit maths (truncated exit probabilities, conditional gates,
oracle exit, cumulative gate targets) is `jaxexit.exits.gates`; the gate
inputs are `jaxexit.exits.confidence.uncertainty_features`. This module adds
the heads, the three losses, the costs and the gated prediction; the
training schedule is `jaxexit.methods.jei_dnn_train`.

  warm-up      Σ_l (G + 1 − l')·CE_l + CE_final               (§8.4.1)
  GATE         BCE(gate logit_l, 1[l ≥ l*]) with pos-weights   (§8.4.2)
  CLASSIFIER   mean_{b,l} P_l · CE_l · r_x, P constant         (§8.4.2)

Cached features: the backbone is frozen, so the IMs' inputs (the final-norm
CLS token of blocks 0..G-1) and the backbone's logits never change. They are
computed once per split (`ViT.cls_per_block`, held in `CachedFeatures`) and
training and evaluation read them: exactly the paper's computation, at a
fraction of the cost, and a γ sweep re-uses them.

Axes: B batch (N for a whole split), G gates = intermediate exits (L − 1),
L exits including the backbone head, D width, C classes.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import ArrayLike, Real

from jaxexit import checks
from jaxexit.execution.adapter import layer_module
from jaxexit.execution.flops import ExitFlops
from jaxexit.exits.confidence import uncertainty_features
from jaxexit.exits.gates import jei_exit, jei_oracle_exit
from jaxexit.exits.losses import cross_entropy_per_exit, weighted_exit_loss
from jaxexit.exits.outputs import ExitHeadOutput
from jaxexit.exits.select import take_at_exit
from jaxexit.models.exit_classifier import stacked_linear
from jaxexit.typing import Array, Float, Int

ScalarLike = Real[ArrayLike, ""]
MAX_POS_WEIGHT = 5.0  # w_l = min((n − n_l) / n_l, 5)
MIN_EXIT_COUNT = 0.1  # n_l floor
_TINY = float(jnp.finfo(jnp.float32).tiny)
_EVAL_CHUNK = 4096


def _apply_stacked(linear: nnx.Linear, x: Array) -> Array:
  """x [*b, G, I] through G stacked Linears (kernel [G, I, O]) → [*b, G, O]."""
  y = jnp.einsum("...GI,GIO->...GO", x, linear.kernel[...])
  bias = linear.bias[...]
  return y + bias.reshape((1,) * (y.ndim - 2) + bias.shape)


class JeiHeads(nnx.Module):
  """G inference modules Linear(D → C) and G gates Linear(4 → 1).

  IM_l classifies the final-norm CLS token of block l; gate l reads the
  detached uncertainty features of IM_l's softmax (§8.2). The final exit is
  the frozen backbone head, not part of this module.

  Args:
    width: D.
    num_classes: C.
    num_gates: G (depth − 1).
    rngs: initialisation.
  """

  def __init__(
    self, width: int, num_classes: int, num_gates: int, *, rngs: nnx.Rngs
  ):
    checks.positive_int("width", width)
    checks.positive_int("num_classes", num_classes, minimum=2)
    checks.positive_int("num_gates", num_gates)
    self.ims = stacked_linear(num_gates, width, num_classes, rngs)
    self.gates = stacked_linear(num_gates, 4, 1, rngs)
    self.num_gates = num_gates

  def im_logits(
    self, features: Float[Array, "*b G D"]
  ) -> Float[Array, "*b G C"]:
    """Every IM on its block's features."""
    return _apply_stacked(self.ims, features).astype(jnp.float32)

  def gate_logits(
    self, im_logits: Float[Array, "*b G C"]
  ) -> Float[Array, "*b G"]:
    """Every gate's logit on its IM's detached uncertainty features."""
    feats = uncertainty_features(im_logits)  # [*b, G, 4]
    return _apply_stacked(self.gates, feats)[..., 0]

  def __call__(self, layer, features: Float[Array, "B D"]) -> ExitHeadOutput:
    """The exit head after block `layer` < G: IM logits and gate g_l.

    Args:
      layer: Python int or traced int32 in [0, G).
      features: [B, D] final-norm CLS token of block `layer`.

    Returns:
      `ExitHeadOutput(logits [B, C], score [B] = σ(gate logit))`.
    """
    logits = layer_module(self.ims, layer)(features).astype(jnp.float32)
    gate = layer_module(self.gates, layer)(uncertainty_features(logits))
    return ExitHeadOutput(logits=logits, score=jax.nn.sigmoid(gate[:, 0]))


# ---------------------------------------------------------------------------
# Losses.


def warmup_loss(
  im_logits: Float[Array, "B G C"],
  final_logits: Float[Array, "B C"],
  labels: Int[Array, "B"],
) -> Float[Array, ""]:
  """IM warm-up: mean_b [CE_final + Σ_l (G + 1 − l')·CE_l] (§8.4.1).

  l' is the 0-based IM index, so earlier IMs weigh more. CE_final has no
  gradient here (the backbone head is frozen); it keeps the logged value
  the paper's.

  Args:
    im_logits: [B, G, C] IM logits.
    final_logits: [B, C] backbone-head logits.
    labels: [B] int labels.

  Returns:
    scalar float32 loss.
  """
  num_gates = im_logits.shape[-2]
  ce = cross_entropy_per_exit(im_logits, labels)  # [B, G]
  weights = num_gates + 1.0 - jnp.arange(num_gates, dtype=jnp.float32)
  ce_final = cross_entropy_per_exit(final_logits[:, None], labels)  # [B, 1]
  return weighted_exit_loss(ce, weights) + jnp.mean(ce_final)


POS_WEIGHT_COUNTS = ("exact", "cumulative")


def gate_pos_weight(
  val_oracle_exit: Int[Array, "N"], num_gates: int, counts: str = "exact"
) -> Float[Array, "G"]:
  """Positive-class weights w_l = min((n − n_l) / n_l, 5) (§8.4.2).

  With `counts="exact"` (the paper's code) n_l counts the validation
  examples whose oracle exit is exactly l. Gate l's targets are cumulative,
  1[l ≥ l*], so its positives are the examples with l* ≤ l, usually many
  more than n_l: the weight then over-weights the positives, up to the
  cap. `counts="cumulative"` counts gate l's own positives (l* ≤ l), which
  balances each gate's loss. n_l is floored at 0.1; n is the number of
  examples.

  Args:
    val_oracle_exit: [N] oracle exits in [0, G] (G = the final exit).
    num_gates: G.
    counts: "exact" or "cumulative".

  Returns:
    [G] float32 weights in [0, 5].
  """
  checks.positive_int("num_gates", num_gates)
  checks.one_of("counts", counts, POS_WEIGHT_COUNTS)
  gates = jnp.arange(num_gates, dtype=jnp.int32)
  if counts == "exact":
    hits = val_oracle_exit[:, None] == gates[None]  # [N, G]
  else:
    hits = val_oracle_exit[:, None] <= gates[None]
  n_l = jnp.maximum(jnp.sum(hits, axis=0).astype(jnp.float32), MIN_EXIT_COUNT)
  n = jnp.float32(val_oracle_exit.shape[0])
  return jnp.minimum((n - n_l) / n_l, MAX_POS_WEIGHT)


def gate_loss(
  gate_logits: Float[Array, "B G"],
  oracle_targets: Float[Array, "B G"],
  pos_weight: Float[Array, "G"],
) -> Float[Array, ""]:
  """BCE-with-logits with positive weights, mean over B × G (§8.4.2).

  ℓ = −[w_l · t · log σ(x) + (1 − t) · log σ(−x)], torch's
  `BCEWithLogitsLoss(pos_weight=w)`.

  Args:
    gate_logits: [B, G] gate logits.
    oracle_targets: [B, G] targets 1[l ≥ l*] (`jei_gate_targets`).
    pos_weight: [G] (`gate_pos_weight`).

  Returns:
    scalar float32 loss.
  """
  checks.same_shape(
    ("gate_logits", "oracle_targets"), gate_logits, oracle_targets
  )
  x = gate_logits.astype(jnp.float32)
  t = oracle_targets.astype(jnp.float32)
  w = pos_weight.astype(jnp.float32)[None]
  per = -(w * t * jax.nn.log_sigmoid(x) + (1.0 - t) * jax.nn.log_sigmoid(-x))
  return jnp.mean(per)


def classifier_loss(
  im_logits: Float[Array, "B G C"],
  labels: Int[Array, "B"],
  exit_probs: Float[Array, "B G"],
) -> Float[Array, ""]:
  """P-weighted CE with JEI-DNN's r_x rescaling, mean over B × G (§8.4.2).

  Element (x, l) is P_l · CE_l · r_x with r_x = Σ_l CE_l / Σ_l P_l CE_l, so
  each example's row sums to its unweighted Σ_l CE_l while the gradient is
  re-weighted by P. As in the official code, P is constant (stop-gradient)
  and r_x is not. Where Σ_l P_l CE_l = 0 every element is already 0 and
  r_x is set to 0 (no 0/0).

  Args:
    im_logits: [B, G] IM logits (per class: [B, G, C]).
    labels: [B] int labels.
    exit_probs: [B, G] P from `jei_exit_probabilities`.

  Returns:
    scalar float32 loss.
  """
  ce = cross_entropy_per_exit(im_logits, labels)  # [B, G]
  checks.same_shape(("per-exit CE", "exit_probs"), ce, exit_probs)
  weighted = jax.lax.stop_gradient(exit_probs.astype(jnp.float32)) * ce
  den = jnp.sum(weighted, axis=-1)
  ok = den > _TINY
  r = jnp.where(ok, jnp.sum(ce, axis=-1) / jnp.where(ok, den, 1.0), 0.0)
  return jnp.mean(weighted * r[:, None])


# ---------------------------------------------------------------------------
# Costs, oracle and gated prediction.


def exit_costs(flops: ExitFlops) -> np.ndarray:
  """[L] normalised cost up to each exit, C_final = 1 (§8.4.2).

  C_l = cumulative FLOPs of exiting at l (blocks and every IM + gate on the
  way) / the full backbone's FLOPs; the final exit is pinned to 1, as the
  paper normalises by the backbone. Cost accounting of results uses
  `flops.cumulative` itself (overheads included).

  Args:
    flops: `jaxexit.execution.exit_flops` of the ViT + `JeiHeads` stack.
  """
  costs = np.asarray(flops.cumulative, np.float64) / flops.full
  costs[-1] = 1.0
  return costs


def all_exit_logits(
  im_logits: Float[Array, "*b G C"], final_logits: Float[Array, "*b C"]
) -> Float[Array, "*b L C"]:
  """IM logits with the backbone head's appended as exit L − 1 = G."""
  return jnp.concatenate(
    [
      im_logits.astype(jnp.float32),
      final_logits.astype(jnp.float32)[..., None, :],
    ],
    axis=-2,
  )


def oracle_exit(
  im_logits: Float[Array, "B G C"],
  final_logits: Float[Array, "B C"],
  labels: Int[Array, "B"],
  costs: Float[Array, "L"],
  gamma: ScalarLike,
) -> Int[Array, "B"]:
  """l* = argmin_l CE_l + γ·C_l over the G IMs and the final exit (§8.4.2).

  Args:
    im_logits: [B, G, C].
    final_logits: [B, C].
    labels: [B].
    costs: [L = G + 1] normalised costs (`exit_costs`).
    gamma: γ ≥ 0.

  Returns:
    [B] int32 oracle exits in [0, G].
  """
  ce = cross_entropy_per_exit(all_exit_logits(im_logits, final_logits), labels)
  return jei_oracle_exit(ce, costs, gamma)


def gated_exit(gate_logits: Float[Array, "*b G"]) -> Int[Array, "*b"]:
  """Inference exit in [0, G]: first c_l ≥ 0.5, else the final exit (§8.3)."""
  g = jax.nn.sigmoid(gate_logits.astype(jnp.float32))
  final = jnp.ones(g.shape[:-1] + (1,), jnp.float32)
  return jei_exit(jnp.concatenate([g, final], axis=-1))


class CachedFeatures(NamedTuple):
  """One split's frozen-backbone outputs (host numpy).

  Attributes:
    features: [N, G, D] float32 final-norm CLS token of blocks 0..G-1.
    final_logits: [N, C] float32 backbone-head logits.
    labels: [N] int32.
  """

  features: np.ndarray
  final_logits: np.ndarray
  labels: np.ndarray


class JeiOutputs(NamedTuple):
  """Every exit of a split, and the gated prediction.

  Attributes:
    logits: [N, L, C] float32 logits of the G IMs and the backbone head.
    gate_logits: [N, G] float32.
    exit_layer: [N] int32 gated exit in [0, L − 1].
  """

  logits: np.ndarray
  gate_logits: np.ndarray
  exit_layer: np.ndarray

  @property
  def exit_logits(self) -> np.ndarray:
    """[N, C] logits at each example's gated exit."""
    return np.asarray(
      take_at_exit(jnp.asarray(self.logits), jnp.asarray(self.exit_layer))
    )


@jax.jit
def _outputs_chunk(heads, features, final_logits):
  im = heads.im_logits(features)
  gate = heads.gate_logits(im)
  return all_exit_logits(im, final_logits), gate, gated_exit(gate)


def jei_outputs(heads: JeiHeads, data: CachedFeatures) -> JeiOutputs:
  """All exits and the gated exit of `data`, in chunks of 4096."""
  parts = []
  for i in range(0, len(data.labels), _EVAL_CHUNK):
    sl = slice(i, i + _EVAL_CHUNK)
    parts.append(
      jax.device_get(
        _outputs_chunk(
          heads,
          jnp.asarray(data.features[sl]),
          jnp.asarray(data.final_logits[sl]),
        )
      )
    )
  return JeiOutputs(*(np.concatenate(xs) for xs in zip(*parts)))
