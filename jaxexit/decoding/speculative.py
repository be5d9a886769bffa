"""Draft-and-verify maths: acceptance rules and the cost model (§5.3).

Pure functions used by `jaxexit.decoding.self_speculative` (LayerSkip
self-speculation), each with a plain per-row reference beside it:

* `greedy_accept`: the longest prefix of the drafts equal to the full
  model's argmax, plus the full model's token after it (lossless greedy);
* `speculative_accept`: the standard speculative-sampling rule (Leviathan et
  al. 2023; Chen et al. 2023): draft x_j is kept with probability
  min(1, p_full(x_j) / p_draft(x_j)); at the first rejection the next token
  is drawn from norm(max(0, p_full − p_draft)), and after d acceptances from
  p_full at the position after the last draft. The emitted tokens are then
  distributed exactly as the full model's samples;
* `SelfSpeculativeCost`: layers computed per emitted token.

Axes: B batch, J = d draft tokens, V vocabulary.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxexit import checks

from jaxexit.typing import Array, Float, Int


def _leading_true(ok: Array) -> Int[Array, "B"]:
  """Length of the all-True prefix of each row of `ok [B, J]`."""
  return jnp.sum(jnp.cumprod(ok.astype(jnp.int32), axis=1), axis=1)


def greedy_accept(
  drafts: Int[Array, "B J"], full_logits: Float[Array, "B J+1 V"]
) -> tuple[Int[Array, "B"], Int[Array, "B"]]:
  """(accepted a [B] in [0, J], next token [B]) under greedy decoding.

  `full_logits[:, j]` is the full model's prediction for the token after
  the j-th fed token (the last accepted one, then drafts 1..J), so draft j+1
  is checked against `argmax full_logits[:, j]` and the next token is the
  argmax at position a.
  """
  target = jnp.argmax(full_logits, axis=-1).astype(jnp.int32)  # [B, J+1]
  accepted = _leading_true(drafts == target[:, :-1])
  nxt = jnp.take_along_axis(target, accepted[:, None], axis=1)[:, 0]
  return accepted, nxt


def speculative_accept(
  drafts: Int[Array, "B J"],
  p_draft: Float[Array, "B J V"],
  p_full: Float[Array, "B J+1 V"],
  uniforms: Float[Array, "B J"],
) -> tuple[Int[Array, "B"], Float[Array, "B V"]]:
  """(accepted a [B], distribution [B, V] of the next token).

  Args:
    drafts: the drafted ids; draft j was sampled from `p_draft[:, j]`.
    p_draft: draft probabilities at each draft step.
    p_full: the full model's probabilities at the J + 1 verified positions.
    uniforms: U[0, 1) draws; draft j is kept iff u_j · p_draft(x_j) <
      p_full(x_j) (that is u_j < p_full / p_draft without a division).

  Returns:
    The accepted prefix length and the distribution to sample the next
    token from: norm(max(0, p_full − p_draft)) at the first rejection (p_full
    itself if that residual is all zero, i.e. p_full == p_draft there), or
    `p_full[:, J]` when every draft was accepted.
  """
  take = lambda p: jnp.take_along_axis(p, drafts[..., None], axis=-1)[..., 0]
  ok = uniforms * take(p_draft) < take(p_full[:, :-1])  # [B, J]
  accepted = _leading_true(ok)
  residual = jnp.maximum(p_full[:, :-1] - p_draft, 0.0)  # [B, J, V]
  residual = jnp.concatenate([residual, p_full[:, -1:]], axis=1)
  at = lambda p: jnp.take_along_axis(p, accepted[:, None, None], axis=1)
  residual, full_at = at(residual)[:, 0], at(p_full)[:, 0]  # [B, V]
  total = jnp.sum(residual, axis=-1, keepdims=True)
  safe = jnp.where(total > 0, total, 1.0)
  return accepted, jnp.where(total > 0, residual / safe, full_at)


def speculative_accept_reference(drafts, p_draft, p_full, uniforms):
  """`speculative_accept` as a plain per-row numpy loop (the reference)."""
  drafts, p_draft, p_full, uniforms = map(
    np.asarray, (drafts, p_draft, p_full, uniforms)
  )
  accepted, dist = [], []
  for b in range(drafts.shape[0]):
    a = 0
    while a < drafts.shape[1]:
      x = drafts[b, a]
      if not uniforms[b, a] * p_draft[b, a, x] < p_full[b, a, x]:
        break
      a += 1
    if a == drafts.shape[1]:
      nxt = p_full[b, a]
    else:
      nxt = np.maximum(p_full[b, a] - p_draft[b, a], 0.0)
      nxt = nxt / nxt.sum() if nxt.sum() > 0 else p_full[b, a]
    accepted.append(a)
    dist.append(nxt)
  return np.array(accepted, np.int32), np.stack(dist)


def greedy_accept_reference(drafts, full_logits):
  """`greedy_accept` as a plain per-row numpy loop (the reference)."""
  drafts, full_logits = np.asarray(drafts), np.asarray(full_logits)
  accepted, nxt = [], []
  for b in range(drafts.shape[0]):
    a = 0
    while a < drafts.shape[1] and drafts[b, a] == full_logits[b, a].argmax():
      a += 1
    accepted.append(a)
    nxt.append(full_logits[b, a].argmax())
  return np.array(accepted, np.int32), np.array(nxt, np.int32)


def sample_probs(probs: Float[Array, "B V"], key: jax.Array) -> Int[Array, "B"]:
  """One id per row drawn from `probs` (zeros are never drawn)."""
  logp = jnp.where(
    probs > 0, jnp.log(jnp.where(probs > 0, probs, 1.0)), -jnp.inf
  )
  return jax.random.categorical(key, logp).astype(jnp.int32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SelfSpeculativeCost:
  """Layer work of self-speculation per emitted token (LayerSkip §5.3).

  One round drafts d tokens through blocks 0..E−1 and the exit head, feeds
  the d-th draft through blocks 0..E−1 too (its layer-E state is needed to
  verify it), then runs blocks E..L−1 once on the d + 1 positions, and
  emits a + 1 tokens (a accepted drafts, one from the full model).

  Attributes:
    num_layers: L.
    exit_layer: E, blocks before the draft exit.
    draft_len: d.
    accepted: mean accepted drafts per round, in [0, d].
  """

  num_layers: int
  exit_layer: int
  draft_len: int
  accepted: float

  def __post_init__(self):
    checks.positive_int("exit_layer", self.exit_layer)
    checks.in_range("exit_layer", self.exit_layer, 1, self.num_layers - 1)
    checks.positive_int("draft_len", self.draft_len)
    checks.in_range("accepted", self.accepted, 0.0, self.draft_len)

  @property
  def tokens_per_round(self) -> float:
    return self.accepted + 1.0

  @property
  def sequential_layers_per_token(self) -> float:
    """Memory-bound cost: a block run on the d + 1 verified positions at
    once costs as much as on one (weights are read once). The full model
    costs L per token."""
    e, d = self.exit_layer, self.draft_len
    per_round = e * (d + 1) + (self.num_layers - e)
    return per_round / self.tokens_per_round

  @property
  def layer_positions_per_token(self) -> float:
    """Compute-bound cost (FLOPs up to heads): block applications per
    emitted token, L (d + 1) / (a + 1) ≥ L: self-speculation never saves
    FLOPs, only sequential passes."""
    return self.num_layers * (self.draft_len + 1) / self.tokens_per_round

  @property
  def theoretical_speedup(self) -> float:
    """L / `sequential_layers_per_token` (exit heads not counted)."""
    return self.num_layers / self.sequential_layers_per_token
