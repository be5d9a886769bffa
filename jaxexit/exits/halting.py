# Over 400 lines: 397 before ruff format; maths and their rule twins.
"""PonderNet / PALBERT halting maths: distributions, priors, KL, exit rules.

Papers: PonderNet (Banino et al., 2021) and PALBERT (Balagansky & Gavrilov,
NeurIPS 2022); spec `encoder_exits.md` §2 (PonderNet), §3 (PALBERT) and §12.
Equation numbers below refer to the spec's sections, e.g. (§2.p) is the
halting distribution p_n = λ_n Π_{j<n}(1 − λ_j).

Axes: `L` is the exit (layer) axis and comes right after the batch axes
`*b`: λ and p are `[*b, L]`. Layer indices are 0-based; an example that never
meets its exit condition falls back to the last layer `L-1`
(`select.first_exit`). All maths is float32 (inputs are cast).

Every vectorised exit here has an incremental twin in `(init, update)` form
(`rules.ExitRule`): `q_exit` ↔ `q_exit_rule`, `sampled_exit` ↔
`sampled_exit_rule`.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import ArrayLike, Real

from jaxexit import checks
from jaxexit.exits.outputs import ExitHeadOutput
from jaxexit.exits.rules import ExitRule
from jaxexit.exits.select import first_exit
from jaxexit.typing import Array, Float, Int, PRNGKeyArray

ScalarLike = Real[ArrayLike, ""]
# Smallest positive normal float32: log() of it is finite (≈ −87.3), so
# clamped logs never produce −inf, NaN or NaN gradients.
_TINY = float(jnp.finfo(jnp.float32).tiny)

REMAINDERS = ("none", "last")
KL_DIRECTIONS = ("prior_p", "p_prior")


def _f32(x) -> Array:
  return jnp.asarray(x, jnp.float32)


def _exclusive_cumprod(x: Array) -> Array:
  """`out[..., n] = Π_{j<n} x[..., j]` (1 at n = 0)."""
  ones = jnp.ones_like(x[..., :1])
  return jnp.concatenate([ones, jnp.cumprod(x[..., :-1], axis=-1)], axis=-1)


def _exclusive_cumsum(x: Array) -> Array:
  """`out[..., n] = Σ_{j<n} x[..., j]` (0 at n = 0)."""
  zeros = jnp.zeros_like(x[..., :1])
  return jnp.concatenate([zeros, jnp.cumsum(x[..., :-1], axis=-1)], axis=-1)


def halting_distribution(
  lambdas: Float[Array, "*b L"], *, remainder: str = "none"
) -> Float[Array, "*b L"]:
  """Unconditional halting probabilities from conditional ones.

  PonderNet eq. (§2.p): p_n = λ_n Π_{j<n}(1 − λ_j).

  Args:
    lambdas: [*b, L] conditional halting probabilities λ_n ∈ [0, 1].
    remainder: "none" (PALBERT, §3.2: λ_L is not forced, Σ_n p_n ≤ 1 and the
      leftover mass is not modelled) or "last" (PonderNet, §2: λ_L := 1 so
      the last step takes the remaining mass and Σ_n p_n = 1).

  Returns:
    [*b, L] float32 halting distribution p.
  """
  checks.one_of("remainder", remainder, REMAINDERS)
  checks.rank_at_least("lambdas", lambdas, 1, "*b, L")
  checks.probabilities("lambdas", lambdas)
  lam = _f32(lambdas)
  if remainder == "last":
    lam = lam.at[..., -1].set(1.0)
  return lam * _exclusive_cumprod(1.0 - lam)


def truncated_geometric_prior(
  lambda_p: ScalarLike, num_layers: int
) -> Float[Array, "L"]:
  """PonderNet's geometric prior truncated to L steps.

  PonderNet eq. (§2, §3.2): p_G(k) = λ_p (1 − λ_p)^{k−1} for k = 1..L−1, and
  the tail mass (1 − λ_p)^{L−1} goes into the last bin (as PALBERT's
  `RegularizationLoss` does), so the prior sums to 1.

  Args:
    lambda_p: prior halting probability λ_p ∈ (0, 1) (PALBERT default 0.1).
    num_layers: L ≥ 1.

  Returns:
    [L] float32 prior.
  """
  checks.in_range("lambda_p", lambda_p, 0.0, 1.0, low_open=True, high_open=True)
  checks.positive_int("num_layers", num_layers)
  lam = _f32(lambda_p)
  k = jnp.arange(num_layers, dtype=jnp.float32)  # k−1 for k = 1..L
  survive = (1.0 - lam) ** k  # [L] P(no halt before step k)
  # Closed-form tail (1 − λ_p)^{L−1} rather than 1 − Σ: exact for tiny λ_p.
  return jnp.where(k < num_layers - 1, lam * survive, survive)


# PALBERT's prior (§3.4): λ_p = 0.1 on ALBERT-base's 12 layers.
PAPER_LAMBDA_P = 0.1
PAPER_NUM_LAYERS = 12
PRIOR_SETTINGS = ("depth_matched", "paper")


def depth_matched_lambda_p(
  num_layers: int,
  *,
  reference_lambda_p: float = PAPER_LAMBDA_P,
  reference_layers: int = PAPER_NUM_LAYERS,
) -> float:
  """λ_p whose prior keeps the reference prior's shape over relative depth.

  The geometric prior's survival after k layers is (1 − λ_p)^k. Requiring
  the same survival after the same *fraction* of the depth, i.e.
  (1 − λ_L)^L = (1 − λ_ref)^{L_ref}, gives

    λ_L = 1 − (1 − λ_ref)^{L_ref / L}.

  So the continuous median ln 0.5 / ln(1 − λ) sits at 54.8 % of the depth
  for every L (6.58 of 12 layers with the paper's λ_p = 0.1), and the tail
  mass put into the last bin is the same. With the paper's 0.1 at 12 layers:

    L    λ_p     prior median layer (first k with CDF > 0.5)
    6    0.190   4 of 6    (the literal 0.1 would put it at 6 of 6)
    12   0.100   7 of 12   (the paper's setting, unchanged)
    24   0.051   14 of 24

  Args:
    num_layers: L ≥ 1, the encoder's depth.
    reference_lambda_p: λ_ref ∈ (0, 1), the paper's prior (0.1).
    reference_layers: L_ref ≥ 1, the depth it was set for (12).

  Returns:
    λ_L as a Python float.
  """
  checks.positive_int("num_layers", num_layers)
  checks.positive_int("reference_layers", reference_layers)
  checks.in_range(
    "reference_lambda_p",
    reference_lambda_p,
    0.0,
    1.0,
    low_open=True,
    high_open=True,
  )
  return 1.0 - (1.0 - reference_lambda_p) ** (reference_layers / num_layers)


def prior_lambda_p(setting: str, num_layers: int) -> float:
  """λ_p for a named prior setting.

  Args:
    setting: "depth_matched" (`depth_matched_lambda_p`: the paper's prior
      carried over to L layers) or "paper" (the literal λ_p = 0.1, which on
      a 6-layer encoder puts the prior's median at the last layer).
    num_layers: L ≥ 1.
  """
  checks.one_of("prior", setting, PRIOR_SETTINGS)
  if setting == "paper":
    return PAPER_LAMBDA_P
  return depth_matched_lambda_p(num_layers)


def kl_divergence(
  p: Float[Array, "... L"], q: Float[Array, "... L"]
) -> Float[Array, "..."]:
  """KL(p ‖ q) = Σ_n p_n (log p_n − log q_n) over the last axis.

  0·log 0 = 0, and both logs are clamped at float32 `tiny`, so a zero in q
  where p > 0 gives a large finite value, never inf/NaN (values or grads).
  `p` and `q` broadcast against each other explicitly (e.g. p [B, L] and a
  prior q [L]).

  Args:
    p: [*b, L] distribution (need not be normalised, e.g. PALBERT's p).
    q: [*b, L] distribution (or any shape broadcastable to p's).

  Returns:
    [*b] float32 KL per example.
  """
  checks.rank_at_least("p", p, 1, "*b, L")
  checks.rank_at_least("q", q, 1, "*b, L")
  checks.probabilities("p", p)
  checks.probabilities("q", q)
  if p.shape[-1] != q.shape[-1]:
    raise ValueError(
      f"p and q must share the last (L) axis; got p.shape={p.shape}, "
      f"q.shape={q.shape}"
    )
  shape = jnp.broadcast_shapes(p.shape, q.shape)
  p = jnp.broadcast_to(_f32(p), shape)
  q = jnp.broadcast_to(_f32(q), shape)
  log_ratio = jnp.log(jnp.maximum(p, _TINY)) - jnp.log(jnp.maximum(q, _TINY))
  return jnp.sum(jnp.where(p > 0, p * log_ratio, 0.0), axis=-1)


def ponder_kl(
  p: Float[Array, "*b L"],
  prior: Float[Array, "... L"],
  *,
  direction: str = "prior_p",
) -> Float[Array, "*b"]:
  """PonderNet's KL regulariser between halting distribution and prior.

  PonderNet eq. (§2, L_Reg): the paper writes KL(p ‖ p_G) ("p_prior");
  PALBERT and the labml reference compute `KLDivLoss(log p, p_G)`, which is
  KL(p_G ‖ p) ("prior_p", the default, §12.2).

  Args:
    p: [*b, L] halting distribution.
    prior: [L] (or [*b, L]) prior, e.g. `truncated_geometric_prior`.
    direction: "prior_p" → KL(prior ‖ p); "p_prior" → KL(p ‖ prior).

  Returns:
    [*b] float32 KL per example.
  """
  checks.one_of("direction", direction, KL_DIRECTIONS)
  if direction == "prior_p":
    return kl_divergence(prior, p)
  return kl_divergence(p, prior)


def epsilon_floor(
  p: Float[Array, "*b L"], eps: ScalarLike = 0.05
) -> Float[Array, "*b L"]:
  """PALBERT's ε-trick: p_n := ε/L once the mass before step n exceeds 1 − ε.

  PALBERT §3.2 / §12.4. Semantics read from the official code
  (tinkoff-ai/palbert `src/modeling/palbert_fast.py`, training branch of
  `PAlbertModel.forward`): the running CDF is compared *before* the current
  step's mass is added, i.e. step n is floored iff Σ_{j<n} p_j > 1 − ε
  (strict), and the floored value ε/L is a constant (`masked_fill`: no
  gradient). The running CDF then accumulates the floored values, but
  because it already exceeds 1 − ε and keeps growing, this is the same as
  testing the exclusive CDF of the *unfloored* p, which is what we do.
  Official code also stops the layer loop once every example in the batch
  is floored and pads p with ε/L; that gives the same p, but those padded
  steps then have no logits, so their p_n·ℓ_n terms are missing from its
  task loss (here all L logits exist and the ε/L·ℓ_n terms are kept).

  Args:
    p: [*b, L] halting distribution.
    eps: ε ∈ [0, 1) (PALBERT default 0.05).

  Returns:
    [*b, L] float32 floored distribution (log-safe where floored, for ε > 0).
  """
  checks.in_range("eps", eps, 0.0, 1.0, high_open=True)
  checks.rank_at_least("p", p, 1, "*b, L")
  checks.probabilities("p", p)
  p = _f32(p)
  num_layers = p.shape[-1]
  floored = _exclusive_cumsum(p) > 1.0 - _f32(eps)
  return jnp.where(floored, _f32(eps) / num_layers, p)


def q_exit(p: Float[Array, "*b L"], q: ScalarLike) -> Int[Array, "*b"]:
  """PALBERT's Q-exit: the first step whose CDF *strictly* exceeds q.

  PALBERT §3.3 (official `exit_criteria="threshold"`): CDF_n = Σ_{k≤n} p_k,
  exit at the first n with CDF_n > q; fall back to L−1 if none.

  Args:
    p: [*b, L] halting distribution (PALBERT: `remainder="none"`).
    q: quantile in (0, 1) (PALBERT default 0.5).

  Returns:
    [*b] int32 exit layer in [0, L−1].
  """
  checks.in_range("q", q, 0.0, 1.0, low_open=True, high_open=True)
  checks.rank_at_least("p", p, 1, "*b, L")
  checks.probabilities("p", p)
  return first_exit(jnp.cumsum(_f32(p), axis=-1) > _f32(q))


def _uniform_at(key: PRNGKeyArray, layer) -> Array:
  """The uniform draw example `key` uses at `layer` (shared by both forms)."""
  return jax.random.uniform(jax.random.fold_in(key, layer), (), jnp.float32)


def sampled_exit(
  key: PRNGKeyArray, lambdas: Float[Array, "B L"]
) -> Int[Array, "B"]:
  """PonderNet's stochastic exit: halt at step n with probability λ_n.

  PonderNet §2 inference (PALBERT `exit_criteria="sample"`). Randomness is
  defined per example and per layer so the incremental `sampled_exit_rule`
  reproduces it exactly: `keys = jax.random.split(key, B)`, and example b
  halts at layer n iff `uniform(fold_in(keys[b], n)) < λ[b, n]`. The first
  halt wins; with none the example exits at L−1.

  Args:
    key: PRNG key.
    lambdas: [B, L] conditional halting probabilities.

  Returns:
    [B] int32 exit layer.
  """
  if jnp.ndim(lambdas) != 2:
    raise ValueError(f"lambdas must be [B, L]; got shape {lambdas.shape}")
  checks.probabilities("lambdas", lambdas)
  batch, num_layers = lambdas.shape
  keys = jax.random.split(key, batch)
  layers = jnp.arange(num_layers, dtype=jnp.int32)
  u = jax.vmap(lambda k: jax.vmap(lambda n: _uniform_at(k, n))(layers))(
    keys
  )  # [B, L]
  return first_exit(u < _f32(lambdas))


def ponder_task_loss(
  per_layer_loss: Float[Array, "*b L"], p: Float[Array, "*b L"]
) -> Float[Array, ""]:
  """PonderNet's reconstruction term Σ_n mean_b p_n ℓ_n.

  PonderNet eq. (§2, L_Rec); PALBERT §3.2 (`total_loss += (p_n·ℓ_n).mean()`
  per step). p is *not* stop-gradient'ed: the halting head learns from it.

  Args:
    per_layer_loss: [*b, L] loss of each exit (CE or MSE).
    p: [*b, L] halting distribution.

  Returns:
    scalar float32 loss.
  """
  checks.same_shape(("per_layer_loss", "p"), per_layer_loss, p)
  checks.finite("per_layer_loss", per_layer_loss)
  checks.probabilities("p", p)
  weighted = _f32(p) * _f32(per_layer_loss)
  return jnp.mean(jnp.sum(weighted, axis=-1))


# ---------------------------------------------------------------------------
# Incremental rules.


def _head_field(head_out: ExitHeadOutput, name: str) -> Array:
  """`head_out.<name>` as float32 [B] (accepts [B, 1])."""
  x = getattr(head_out, name)
  if x is None:
    raise ValueError(f"this rule reads ExitHeadOutput.{name}, which is None")
  if jnp.ndim(x) == 2 and jnp.shape(x)[1] == 1:
    x = x[:, 0]
  if jnp.ndim(x) != 1:
    raise ValueError(
      f"ExitHeadOutput.{name} must be [B]; got shape {jnp.shape(x)}"
    )
  return _f32(x)


class QExitState(NamedTuple):
  """State of `q_exit_rule`."""

  survival: Array  # [B] float32, Π_{j<n}(1 − λ_j)
  cdf: Array  # [B] float32, Σ_{j<n} p_j


def q_exit_rule(q: ScalarLike) -> ExitRule:
  """Incremental Q-exit (twin of `q_exit(halting_distribution(λ), q)`).

  Reads `head_out.halt` = λ_n [B]; keeps the survival Π(1 − λ) and the CDF.
  PALBERT §3.3: exit when CDF_n > q (strict); no forced remainder.

  Args:
    q: quantile in (0, 1).
  """
  checks.in_range("q", q, 0.0, 1.0, low_open=True, high_open=True)

  def init(batch_size, rule_inputs=None):
    del rule_inputs
    return QExitState(
      survival=jnp.ones((batch_size,), jnp.float32),
      cdf=jnp.zeros((batch_size,), jnp.float32),
    )

  def update(state, head_out, layer):
    del layer
    lam = _head_field(head_out, "halt")
    checks.probabilities("head_out.halt", lam)
    cdf = state.cdf + lam * state.survival
    survival = state.survival * (1.0 - lam)
    return QExitState(survival, cdf), cdf > _f32(q)

  return ExitRule(init, update, reads=("halt",))


class SampledExitState(NamedTuple):
  """State of `sampled_exit_rule`."""

  keys: Array  # [B] PRNG keys (or [B, 2] uint32 raw keys)


def sampled_exit_rule() -> ExitRule:
  """Incremental PonderNet sampling (twin of `sampled_exit`).

  `rule_inputs` is one PRNG key; `init` splits it into B per-example keys
  (batch-first, so compaction keeps each example's stream). `update` reads
  `head_out.halt` = λ_n and halts iff `uniform(fold_in(keys[b], n)) < λ_n`.
  """

  def init(batch_size, rule_inputs):
    if rule_inputs is None:
      raise ValueError(
        "sampled_exit_rule needs a PRNG key as rule_inputs; got None"
      )
    return SampledExitState(jax.random.split(rule_inputs, batch_size))

  def update(state, head_out, layer):
    lam = _head_field(head_out, "halt")
    checks.probabilities("head_out.halt", lam)
    u = jax.vmap(lambda k: _uniform_at(k, layer))(state.keys)  # [B]
    return state, u < lam

  return ExitRule(init, update, reads=("halt",))
