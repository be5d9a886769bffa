"""ExIt episodes: choose starts, turn rollouts into buffer candidates.

Paper: ExIt (Jiang, Lupu & Bachrach, arXiv:2509.04575) Algorithm 1; spec
`exploratory_iteration.md` §3.3 and §4 (steps 1–2 and 8). One training
iteration:

  starts = select_starts(key, buffer, config, fresh_items, p_div)
  ... G rollouts per start, rewards, S = group_learnability(rewards) ...
  buffer = update_buffer(buffer, starts, S, step, dedupe=config.dedupe,
      expand=lambda parent: expand_children(make_child, starts, responses,
                                            S, parent))

Depth counts generations of the lineage: a base task is 0, every entry
expanded from an episode is one deeper than that episode's start (for a
single-turn task: the index of the latest iterate). Multi-turn domains insert
every turn prefix of an expanded history (`expand_prefixes`), each as deep as
the child.

Axes: P prompts (starts), G generations per prompt, T turns, N buffer slots,
M candidates.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Real

from jaxexit import checks
from jaxexit.exploratory_iteration.buffer import (
  BufferConfig,
  TaskBuffer,
  buffer_size,
  insert_batch,
  sample,
  update_scores,
)

# A fresh (or replayed) base task; self-improve / self-divergence prompts on
# a stored history.
from jaxexit.exploratory_iteration.domains.base import (
  MODE_BASE,
  MODE_DIVERGE,
  MODE_IMPROVE,
)
from jaxexit.typing import Array, Bool, Float, Int, PRNGKeyArray, PyTree

ScalarLike = Real[ArrayLike, ""]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Starts:
  """The start of each episode of an iteration (documentation-typed fields).

  Attributes:
    items: pytree of [P, ...] leaves: the replayed entries or fresh tasks.
    from_buffer: [P] bool, the start was replayed from the buffer.
    buffer_idx: [P] int32 replayed slot, −1 for fresh starts.
    depth: [P] int32 depth of the start (0 for fresh, entry depth if
      replayed).
    mode: [P] int32 `MODE_BASE` (fresh, or a replayed depth-0 base task),
      `MODE_IMPROVE` or `MODE_DIVERGE` (replayed histories).
  """

  items: PyTree
  from_buffer: PyTree
  buffer_idx: PyTree
  depth: PyTree
  mode: PyTree


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Candidates:
  """Entries offered to the buffer; the arguments of `insert_batch`.

  Attributes:
    items: pytree of [M, ...] leaves.
    scores: [M] float32 scores (inherited from the episode's start).
    depth: [M] int32 depths.
    parent: [M] int32 parent slots (−1 for none).
    mode: [M] int32 mode of the episode that produced each.
    valid: [M] bool, candidates to consider.
  """

  items: PyTree
  scores: PyTree
  depth: PyTree
  parent: PyTree
  mode: PyTree
  valid: PyTree


def _check_like(items: PyTree, like: PyTree) -> None:
  """Raises unless two item pytrees agree in structure and per-item shape."""
  if jax.tree.structure(items) != jax.tree.structure(like):
    raise ValueError(
      f"fresh_items structure {jax.tree.structure(items)} "
      f"differs from the buffer's {jax.tree.structure(like)}"
    )
  for x, y in zip(jax.tree.leaves(items), jax.tree.leaves(like)):
    if np.shape(x)[1:] != np.shape(y)[1:]:
      raise ValueError(
        f"a fresh_items leaf has shape {np.shape(x)}; "
        f"expected (P, *{np.shape(y)[1:]})"
      )


def _rows(flag: Array, x: Array) -> Array:
  """Broadcasts a [P] flag over the trailing axes of a [P, ...] leaf."""
  return flag.reshape(flag.shape + (1,) * (x.ndim - 1))


def select_starts(
  key: PRNGKeyArray,
  buffer: TaskBuffer,
  config: BufferConfig,
  fresh_items: PyTree,
  p_div: ScalarLike,
  *,
  allow_replay: bool = True,
) -> Starts:
  """Algorithm 1 step 1: replay a buffer entry or take a fresh base task.

  Each of the P starts replays when the buffer holds ≥ B_min entries and a
  uniform draw is < p; the entry is drawn ∝ exp(κ·S) (with replacement).
  A replayed history gets the divergence prompt with probability p_div,
  else the improve prompt; a replayed base task (depth 0) stays a base task.

  Args:
    key: PRNG key.
    buffer: the task buffer.
    config: its settings (min_fill, replay_prob, kappa, score_norm).
    fresh_items: pytree of [P, ...] fresh base tasks, shaped like the
      buffer's items.
    p_div: probability of a divergence step, in [0, 1].
    allow_replay: False never replays (plain GRPO).

  Returns:
    The `Starts` of the P episodes.
  """
  _check_like(fresh_items, buffer.items)
  checks.in_range("p_div", p_div, 0.0, 1.0)
  p = jax.tree.leaves(fresh_items)[0].shape[0]
  k_replay, k_draw, k_div = jax.random.split(key, 3)
  ready = allow_replay & (buffer_size(buffer) >= config.min_fill)
  from_buffer = ready & (
    jax.random.uniform(k_replay, (p,)) < config.replay_prob
  )
  idx = sample(buffer, k_draw, p, config.kappa, score_norm=config.score_norm)
  items = jax.tree.map(
    lambda b, f: jnp.where(_rows(from_buffer, f), b[idx], f),
    buffer.items,
    fresh_items,
  )
  depth = jnp.where(from_buffer, buffer.depth[idx], 0)
  diverge = jax.random.uniform(k_div, (p,)) < p_div
  mode = jnp.where(diverge, MODE_DIVERGE, MODE_IMPROVE)
  mode = jnp.where(from_buffer & (depth > 0), mode, MODE_BASE)
  return Starts(
    items=items,
    from_buffer=from_buffer,
    buffer_idx=jnp.where(from_buffer, idx, -1).astype(jnp.int32),
    depth=depth.astype(jnp.int32),
    mode=mode.astype(jnp.int32),
  )


def base_candidates(starts: Starts, scores: Float[Array, "P"]) -> Candidates:
  """Fresh starts as depth-0 base-task entries scored S (Algorithm 1 step 4).

  Replayed starts are invalid here: their score goes through
  `update_scores`.
  """
  p = scores.shape[0]
  return Candidates(
    items=starts.items,
    scores=scores.astype(jnp.float32),
    depth=jnp.zeros((p,), jnp.int32),
    parent=jnp.full((p,), -1, jnp.int32),
    mode=jnp.full((p,), MODE_BASE, jnp.int32),
    valid=~starts.from_buffer,
  )


def _per_rollout(make: Callable, starts: Starts, responses: PyTree) -> PyTree:
  """`make(start_item, response)` for every [P, G] rollout."""
  per_group = jax.vmap(make, in_axes=(None, 0))
  return jax.vmap(per_group)(starts.items, responses)


def _repeat(x: Array, times: int) -> Array:
  return jnp.repeat(x, times, axis=0, total_repeat_length=x.shape[0] * times)


def _flatten_groups(tree: PyTree) -> PyTree:
  return jax.tree.map(lambda x: x.reshape((-1, *x.shape[2:])), tree)


def expand_children(
  make_child: Callable[[PyTree, PyTree], PyTree],
  starts: Starts,
  responses: PyTree,
  scores: Float[Array, "P"],
  parent: Int[Array, "P"],
  *,
  valid: Bool[Array, "P G"] | None = None,
) -> Candidates:
  """One child per rollout, inheriting its start's score (§3.3 step 4).

  Args:
    make_child: `(start_item, response) -> item`, the domain's new history
      (e.g. the task with the response as its latest iterate and the
      response's quality as `prev_quality`); traced under `vmap`.
    starts: the iteration's starts.
    responses: pytree of [P, G, ...] rollouts.
    scores: [P] S of each start, given to all its children.
    parent: [P] slot of each start (its replayed slot, or where the fresh
      base task was just inserted; −1 for none).
    valid: [P, G] rollouts that may become entries (default all).

  Returns:
    `Candidates` of M = P·G children, group-major, depth = start depth + 1.
  """
  p = scores.shape[0]
  g = jax.tree.leaves(responses)[0].shape[1]
  valid = jnp.ones((p, g), bool) if valid is None else valid
  return Candidates(
    items=_flatten_groups(_per_rollout(make_child, starts, responses)),
    scores=_repeat(scores.astype(jnp.float32), g),
    depth=_repeat(starts.depth + 1, g),
    parent=_repeat(parent.astype(jnp.int32), g),
    mode=_repeat(starts.mode, g),
    valid=valid.reshape(-1),
  )


def flatten_turns(
  items: PyTree,
  valid: Bool[Array, "M T"],
  scores: Float[Array, "M"],
  depth: Int[Array, "M"],
  parent: Int[Array, "M"],
  mode: Int[Array, "M"],
) -> Candidates:
  """Per-turn prefixes [M, T, ...] as M·T candidates (history-major).

  Every prefix of history m inherits m's score, depth, parent and mode;
  `valid` masks the prefixes that do not exist (e.g. turns past the end of a
  shorter task) or should not be offered.

  Args:
    items: pytree of [M, T, ...] prefix items (built by the domain).
    valid: [M, T] which prefixes to offer.
    scores: [M] scores.
    depth: [M] depths.
    parent: [M] parent slots.
    mode: [M] episode modes.

  Returns:
    `Candidates` of M·T entries.
  """
  t = valid.shape[1]
  return Candidates(
    items=_flatten_groups(items),
    scores=_repeat(scores.astype(jnp.float32), t),
    depth=_repeat(depth.astype(jnp.int32), t),
    parent=_repeat(parent.astype(jnp.int32), t),
    mode=_repeat(mode.astype(jnp.int32), t),
    valid=valid.reshape(-1),
  )


def expand_prefixes(
  make_prefixes: Callable[[PyTree, PyTree], tuple[PyTree, Array]],
  starts: Starts,
  responses: PyTree,
  scores: Float[Array, "P"],
  parent: Int[Array, "P"],
  *,
  valid: Bool[Array, "P G"] | None = None,
) -> Candidates:
  """`expand_children` for multi-turn tasks: every turn prefix of a child.

  Args:
    make_prefixes: `(start_item, response) -> (prefix_items, prefix_valid)`
      with prefix_items a pytree of [T, ...] leaves (prefix t ends with the
      latest iterate of turn t) and prefix_valid [T] bool.
    starts, responses, scores, parent, valid: as in `expand_children`.

  Returns:
    `Candidates` of M = P·G·T prefixes (group-, rollout-, then turn-major).
  """
  p = scores.shape[0]
  g = jax.tree.leaves(responses)[0].shape[1]
  valid = jnp.ones((p, g), bool) if valid is None else valid
  prefixes, prefix_valid = _per_rollout(make_prefixes, starts, responses)
  return flatten_turns(
    _flatten_groups(prefixes),
    prefix_valid.reshape(p * g, -1) & valid.reshape(-1, 1),
    _repeat(scores, g),
    _repeat(starts.depth + 1, g),
    _repeat(parent, g),
    _repeat(starts.mode, g),
  )


def insert_candidates(
  buffer: TaskBuffer, cands: Candidates, step: ScalarLike, *, dedupe: bool
) -> tuple[TaskBuffer, Int[Array, "M"]]:
  """`insert_batch` on a `Candidates` (returns the buffer and [M] slots)."""
  return insert_batch(
    buffer,
    cands.items,
    cands.scores,
    cands.depth,
    cands.parent,
    cands.mode,
    cands.valid,
    step,
    dedupe=dedupe,
  )


def update_buffer(
  buffer: TaskBuffer,
  starts: Starts,
  scores: Float[Array, "P"],
  step: ScalarLike,
  *,
  dedupe: bool,
  insert_base: bool = True,
  expand: Callable[[Array], Candidates] | None = None,
) -> TaskBuffer:
  """Algorithm 1 step 4: rescore starts, insert base tasks and children.

  In order: replayed starts get their new S (`update_scores`); fresh base
  tasks are inserted with S (if `insert_base`); then `expand(parent)` builds
  the children (`expand_children` / `expand_prefixes`), with parent [P] the
  replayed slot or the fresh task's new slot (−1 if it was dropped), and
  they are inserted. Curriculum-only: `expand=None`; GRPO: do not call.

  Args:
    buffer: the task buffer.
    starts: the iteration's starts.
    scores: [P] learnability S of each start's group.
    step: current training iteration.
    dedupe: see `insert_batch` (static).
    insert_base: insert fresh base tasks (static).
    expand: `parent [P] -> Candidates`, or None for no expansion.

  Returns:
    The new buffer.
  """
  buffer = update_scores(buffer, starts.buffer_idx, scores, starts.from_buffer)
  parent = starts.buffer_idx
  if insert_base:
    buffer, slot = insert_candidates(
      buffer, base_candidates(starts, scores), step, dedupe=dedupe
    )
    parent = jnp.where(starts.from_buffer, parent, slot)
  if expand is not None:
    buffer, _ = insert_candidates(buffer, expand(parent), step, dedupe=dedupe)
  return buffer
