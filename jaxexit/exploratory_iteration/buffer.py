# Over 400 lines: 366 before ruff format; state and pure updates.
"""ExIt's task buffer: a fixed-capacity top-N store of partial histories.

Paper: ExIt (Jiang, Lupu & Bachrach, arXiv:2509.04575) Algorithm 1; spec
`exploratory_iteration.md` §3.2–3.5, §4 and §8 (the jaxued `LevelSampler` /
minimax
`PLRBuffer` layout: a pytree of slots, −inf scores when empty, a scan over
candidates to insert).

Capacity rule (§3.3 step 5): a candidate takes a free slot if one exists;
otherwise it replaces the lowest-scoring entry when its score is ≥ that
minimum (ties go to the newcomer), else it is dropped. So the buffer holds
the top-N candidates by score, with no staleness term. Replay samples
entries ∝ exp(κ·S) (§3.5), with replacement.

Axes: N capacity (slots), M candidates of one insert, P prompts (draws).
What an item is (task tokens, previous response, turn index, previous
quality, …) is up to the domain: `items` is any pytree whose leaves have the
slot axis first.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Real

from jaxexit import checks
from jaxexit.exploratory_iteration.learnability import (
  SCORE_NORMS,
  normalize_scores,
)
from jaxexit.typing import Array, Bool, Float, Int, PRNGKeyArray, PyTree

ScalarLike = Real[ArrayLike, ""]


@dataclasses.dataclass(frozen=True, kw_only=True)
class BufferConfig:
  """Static settings of a `TaskBuffer` and of replay.

  Attributes:
    capacity: N ≥ 1 slots (paper math: 512).
    min_fill: B_min, entries needed before replay starts, in [1, N] (paper
      math: 128).
    replay_prob: p, per-prompt probability of replaying a buffer entry once
      the buffer holds B_min entries (paper: 0.5).
    kappa: κ ≥ 0, inverse temperature of the softmax(κ·S) replay
      distribution (not reported by the paper; spec default 20).
    dedupe: an identical item already stored gets the candidate's score
      instead of a second slot (spec §4(b): on for the toy, off for the
      paper-faithful configs).
    score_norm: rescaling of S before the softmax (`normalize_scores`):
      "none" (paper), "max" or "rank".
  """

  capacity: int = 512
  min_fill: int = 128
  replay_prob: float = 0.5
  kappa: float = 20.0
  dedupe: bool = True
  score_norm: str = "none"

  def __post_init__(self):
    checks.positive_int("BufferConfig.capacity", self.capacity)
    checks.positive_int("BufferConfig.min_fill", self.min_fill)
    if self.min_fill > self.capacity:
      raise ValueError(
        f"BufferConfig.min_fill={self.min_fill} must not "
        f"exceed capacity={self.capacity}"
      )
    checks.in_range("BufferConfig.replay_prob", self.replay_prob, 0.0, 1.0)
    checks.in_range(
      "BufferConfig.kappa", self.kappa, 0.0, float("inf"), high_open=True
    )
    checks.one_of("BufferConfig.dedupe", self.dedupe, (True, False))
    checks.one_of("BufferConfig.score_norm", self.score_norm, SCORE_NORMS)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TaskBuffer:
  """Buffer slots (a pytree; every leaf has the slot axis N first).

  Fields are documentation-typed: JAX rebuilds this class with tracers and
  vmap axis specs.

  Attributes:
    items: pytree of [N, ...] leaves, the stored partial histories.
    score: [N] float32 learnability S, −inf in empty slots.
    filled: [N] bool, the slot holds an entry.
    depth: [N] int32 self-iteration depth (0 for a base task).
    inserted_at: [N] int32 training iteration of the insert.
    parent: [N] int32 slot of the entry it was expanded from, −1 for none
      (lineage only: that slot may since have been reused).
    mode: [N] int32 mode of the episode that produced it (see
      `episodes.MODE_*`).
  """

  items: PyTree
  score: PyTree
  filled: PyTree
  depth: PyTree
  inserted_at: PyTree
  parent: PyTree
  mode: PyTree


def init_buffer(config: BufferConfig, example_item: PyTree) -> TaskBuffer:
  """An empty buffer whose items look like `example_item` (no slot axis).

  Args:
    config: the buffer's static settings.
    example_item: one item (arrays or `jax.ShapeDtypeStruct`s), without the
      slot axis.

  Returns:
    A `TaskBuffer` of zeros with −inf scores and nothing filled.
  """
  n = config.capacity

  def slots(x):
    x = x if isinstance(x, jax.ShapeDtypeStruct) else jnp.asarray(x)
    return jnp.zeros((n, *x.shape), x.dtype)

  return TaskBuffer(
    items=jax.tree.map(slots, example_item),
    score=jnp.full((n,), -jnp.inf, jnp.float32),
    filled=jnp.zeros((n,), bool),
    depth=jnp.zeros((n,), jnp.int32),
    inserted_at=jnp.zeros((n,), jnp.int32),
    parent=jnp.full((n,), -1, jnp.int32),
    mode=jnp.zeros((n,), jnp.int32),
  )


def buffer_size(buffer: TaskBuffer) -> Int[Array, ""]:
  """Number of filled slots (int32)."""
  return jnp.sum(buffer.filled, dtype=jnp.int32)


def _check_items(items: PyTree, like: PyTree, lead: int) -> None:
  """Raises unless `items` matches `like`'s structure and per-item shapes."""
  if jax.tree.structure(items) != jax.tree.structure(like):
    raise ValueError(
      f"items structure {jax.tree.structure(items)} differs "
      f"from the buffer's {jax.tree.structure(like)}"
    )
  for x, y in zip(jax.tree.leaves(items), jax.tree.leaves(like)):
    if np.shape(x)[:1] != (lead,) or np.shape(x)[1:] != np.shape(y)[1:]:
      raise ValueError(
        f"an items leaf has shape {np.shape(x)}; expected "
        f"({lead}, *{np.shape(y)[1:]})"
      )


def _matches(items: PyTree, item: PyTree) -> Bool[Array, "N"]:
  """Slots whose item equals `item` in every leaf."""

  def eq(stored, x):
    same = stored == x[None]
    return jnp.all(same.reshape(same.shape[0], -1), axis=-1)

  return jax.tree.reduce(jnp.logical_and, jax.tree.map(eq, items, item))


def _insert_one(buffer: TaskBuffer, cand, step: Array, dedupe: bool):
  """Applies the capacity rule to one candidate; returns (buffer, slot)."""
  item, score, depth, parent, mode, valid = cand
  free = ~buffer.filled
  has_free = jnp.any(free)
  low = jnp.argmin(jnp.where(buffer.filled, buffer.score, jnp.inf))
  slot = jnp.where(has_free, jnp.argmax(free), low)
  write_new = valid & (has_free | (score >= buffer.score[low]))
  write_score = write_new
  if dedupe:
    match = buffer.filled & _matches(buffer.items, item)
    dup = valid & jnp.any(match)
    slot = jnp.where(dup, jnp.argmax(match), slot)
    write_new = write_new & ~dup
    write_score = write_new | dup

  def put(field, value, write):
    return field.at[slot].set(jnp.where(write, value, field[slot]))

  new = TaskBuffer(
    items=jax.tree.map(lambda f, v: put(f, v, write_new), buffer.items, item),
    score=put(buffer.score, score, write_score),
    filled=put(buffer.filled, True, write_new),
    depth=put(buffer.depth, depth, write_new),
    inserted_at=put(buffer.inserted_at, step, write_new),
    parent=put(buffer.parent, parent, write_new),
    mode=put(buffer.mode, mode, write_new),
  )
  return new, jnp.where(write_score, slot, -1).astype(jnp.int32)


def insert_batch(
  buffer: TaskBuffer,
  items: PyTree,
  scores: Float[Array, "M"],
  depth: Int[Array, "M"],
  parent: Int[Array, "M"],
  mode: Int[Array, "M"],
  valid: Bool[Array, "M"],
  step: ScalarLike,
  *,
  dedupe: bool,
) -> tuple[TaskBuffer, Int[Array, "M"]]:
  """Inserts M candidates one after another (a `lax.scan`).

  Per valid candidate, in order: with `dedupe`, if an identical item (every
  leaf equal) is stored, that slot's score is *overwritten* with the
  candidate's (the newest estimate wins, as `update_scores` does; its depth,
  parent, mode and insert time are kept); else it takes a free slot; else it
  replaces the lowest-scoring entry if its score is ≥ that minimum; else it
  is dropped. Candidates of one batch see each other (a later duplicate of an
  earlier one updates it).

  Args:
    buffer: the current buffer.
    items: pytree of [M, ...] candidate items (the buffer's per-item shapes).
    scores: [M] finite scores.
    depth: [M] self-iteration depths.
    parent: [M] parent slots (−1 for none).
    mode: [M] episode modes.
    valid: [M] candidates to consider; the others are skipped.
    step: current training iteration (stored as `inserted_at`).
    dedupe: whether to look for identical stored items (static).

  Returns:
    (buffer, slot): the new buffer and [M] int32 slot each candidate was
    written to or whose score it updated, −1 when skipped or dropped.
  """
  m = scores.shape[0]
  _check_items(items, buffer.items, m)
  checks.same_shape(
    ("scores", "depth", "parent", "mode", "valid"),
    scores,
    depth,
    parent,
    mode,
    valid,
  )
  checks.finite("scores", scores)
  cands = (
    items,
    scores.astype(jnp.float32),
    depth.astype(jnp.int32),
    parent.astype(jnp.int32),
    mode.astype(jnp.int32),
    valid.astype(bool),
  )
  return _insert_scan(buffer, cands, jnp.asarray(step, jnp.int32), dedupe)


# Jitted so eager callers compile the scan once per shape, not per call.
@functools.partial(jax.jit, static_argnums=3)
def _insert_scan(buffer: TaskBuffer, cands, step: Array, dedupe: bool):
  return jax.lax.scan(
    lambda b, c: _insert_one(b, c, step, dedupe), buffer, cands
  )


def update_scores(
  buffer: TaskBuffer,
  idx: Int[Array, "P"],
  scores: Float[Array, "P"],
  mask: Bool[Array, "P"],
) -> TaskBuffer:
  """Overwrites the scores of replayed entries with fresh measurements.

  A slot drawn several times in one batch (replay is with replacement) gets
  the mean of its measurements. Masked-out draws and unfilled slots are left
  alone.

  Args:
    buffer: the current buffer.
    idx: [P] slots (any value where mask is False).
    scores: [P] new scores.
    mask: [P] which draws to apply.

  Returns:
    The buffer with updated `score`.
  """
  checks.same_shape(("idx", "scores", "mask"), idx, scores, mask)
  n = buffer.score.shape[0]
  # Masked draws scatter out of range and are dropped.
  target = jnp.where(mask, idx, n)
  total = (
    jnp.zeros((n,), jnp.float32)
    .at[target]
    .add(scores.astype(jnp.float32), mode="drop")
  )
  count = jnp.zeros((n,), jnp.float32).at[target].add(1.0, mode="drop")
  hit = (count > 0) & buffer.filled
  new = jnp.where(hit, total / jnp.maximum(count, 1.0), buffer.score)
  return dataclasses.replace(buffer, score=new)


def replay_probs(
  buffer: TaskBuffer, kappa: ScalarLike, *, score_norm: str = "none"
) -> Float[Array, "N"]:
  """P(i) = exp(κ·S_i) / Σ_j exp(κ·S_j) over filled slots (0 elsewhere).

  Args:
    buffer: the current buffer.
    kappa: κ ≥ 0.
    score_norm: rescaling of S first (`normalize_scores`).

  Returns:
    [N] float32 probabilities; uniform over all slots when the buffer is
    empty (callers gate replay on `buffer_size`).
  """
  return jax.nn.softmax(_replay_logits(buffer, kappa, score_norm))


def _replay_logits(buffer: TaskBuffer, kappa, score_norm: str) -> Array:
  checks.in_range("kappa", kappa, 0.0, float("inf"), high_open=True)
  s = normalize_scores(buffer.score, score_norm, buffer.filled)
  logits = jnp.where(buffer.filled, kappa * s, -jnp.inf)
  return jnp.where(jnp.any(buffer.filled), logits, 0.0)


def sample(
  buffer: TaskBuffer,
  key: PRNGKeyArray,
  n: int,
  kappa: ScalarLike,
  *,
  score_norm: str = "none",
) -> Int[Array, "P"]:
  """Draws n slots ∝ exp(κ·S) over filled slots, with replacement.

  Args:
    buffer: the current buffer.
    key: PRNG key.
    n: number of draws P (static).
    kappa: κ ≥ 0.
    score_norm: rescaling of S first (`normalize_scores`).

  Returns:
    [n] int32 slots (meaningless when the buffer is empty).
  """
  checks.positive_int("n", n)
  logits = _replay_logits(buffer, kappa, score_norm)
  return jax.random.categorical(key, logits, shape=(n,)).astype(jnp.int32)


def buffer_stats(
  buffer: TaskBuffer,
  step: ScalarLike,
  *,
  kappa: ScalarLike,
  score_norm: str = "none",
  num_bins: int = 10,
  score_range: tuple[float, float] = (0.0, 0.25),
) -> dict[str, Array]:
  """Curriculum diagnostics of the buffer (spec §6.3, §11.5), jit-safe.

  Means over filled slots are 0 when the buffer is empty. "Age" is
  step − inserted_at, so step − age is the paper's "sample from iteration".

  Args:
    buffer: the current buffer.
    step: current training iteration.
    kappa: κ of the replay distribution.
    score_norm: its score rescaling.
    num_bins: bins of the score histogram (static).
    score_range: (low, high) of the equal-width histogram bins; scores
      outside fall into the end bins (S ∈ [0, 0.25] for rewards in [0, 1]).

  Returns:
    Scalars `size`, `score_mean`, `score_max`, `depth_mean`, `depth_max`,
    `age_mean`, `replay_depth_mean` and `replay_age_mean` (expectations
    under the replay distribution), `replay_ess` (effective sample size
    1 / Σ P(i)², between 1 and `size`), and `score_hist` [num_bins] int32
    counts of filled slots.
  """
  checks.positive_int("num_bins", num_bins)
  low, high = score_range
  if not high > low:
    raise ValueError(f"score_range={score_range} must have high > low")
  filled = buffer.filled
  count = jnp.maximum(jnp.sum(filled), 1)
  age = (jnp.asarray(step, jnp.int32) - buffer.inserted_at).astype(jnp.float32)
  depth = buffer.depth.astype(jnp.float32)
  score = jnp.where(filled, buffer.score, 0.0)

  def mean(x):
    return jnp.sum(jnp.where(filled, x, 0.0)) / count

  probs = jnp.where(
    filled, replay_probs(buffer, kappa, score_norm=score_norm), 0.0
  )
  bins = jnp.clip(
    jnp.floor((score - low) / (high - low) * num_bins), 0, num_bins - 1
  ).astype(jnp.int32)
  any_filled = jnp.any(filled)
  return dict(
    size=buffer_size(buffer),
    score_mean=mean(score),
    score_max=jnp.where(
      any_filled, jnp.max(jnp.where(filled, buffer.score, -jnp.inf)), 0.0
    ),
    depth_mean=mean(depth),
    depth_max=jnp.max(jnp.where(filled, buffer.depth, 0)),
    age_mean=mean(age),
    replay_depth_mean=jnp.sum(probs * depth),
    replay_age_mean=jnp.sum(probs * age),
    replay_ess=jnp.where(
      any_filled, 1.0 / jnp.maximum(jnp.sum(probs**2), 1e-30), 0.0
    ),
    score_hist=jnp.zeros((num_bins,), jnp.int32)
    .at[bins]
    .add(filled.astype(jnp.int32)),
  )
