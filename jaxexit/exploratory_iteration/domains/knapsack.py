"""Knapsack-n with bit responses (spec `exploratory_iteration.md` §11.3).

A task has n items with weights and values in 1..9 and capacity
floor(Σw / 2). The prompt is `BOS (w_i v_i)×n SEP c_tens c_units SEP prev
MODE` (prev as bit tokens, BLANK for a base task); the response is n bit
tokens, the chosen set. Quality = value / OPT if the set fits, else 0;
success = value == OPT and fits. OPT is exact: every one of the 2^n masks
is scored with one integer matmul, so it is jit-friendly (n <= 16) and
computed once when tasks are sampled. Near-optimal sets are many, which is
what makes divergence and the embedding diversity bonus meaningful; the
embedding is the bit vector itself.

Warm start: base mode is greedy-by-ratio with log-normal noise on the
ratios; improve mode takes, with probability 1 - improve_random_share, the
best improving local move (add, drop or swap; the identity if none
improves), else a uniformly random local move; diverge mode is a uniformly
random different feasible set with q >= q_prev - 0.1 (the best different
feasible set when none qualifies). Previous answers are noisy-greedy sets
after 0-2 random local moves (so some are infeasible).

Axes: B tasks, I items (n), M masks or moves, P prompt tokens, R response
tokens (= n), V vocabulary.
"""

import dataclasses
import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxexit import checks
from jaxexit.exploratory_iteration.domains import base
from jaxexit.typing import Array, Bool, Float, Int, PRNGKeyArray

BIT_0 = base.NUM_SHARED_TOKENS  # BIT_0 + b for bit b.
MAX_ITEMS = 16
DIVERGE_SLACK = 0.1


class KnapsackTasks(NamedTuple):
  """A batch of Knapsack instances.

  Attributes:
    weights: [B, I] int32 in 1..9.
    values: [B, I] int32 in 1..9.
    capacity: [B] int32, floor(Σ weights / 2).
    opt: [B] int32 optimal value.
  """

  weights: Array
  values: Array
  capacity: Array
  opt: Array


def all_masks(n: int) -> np.ndarray:
  """[2^n, n] int32 bit patterns (a trace-time constant)."""
  return ((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1).astype(
    np.int32
  )


def local_moves(n: int) -> np.ndarray:
  """[n + C(n, 2), n] int32 flip patterns: single flips (add or drop),
  then pair flips (a swap when the two bits differ)."""
  pairs = list(itertools.combinations(range(n), 2))
  flips = np.zeros((n + len(pairs), n), np.int32)
  flips[np.arange(n), np.arange(n)] = 1
  for m, (i, j) in enumerate(pairs):
    flips[n + m, [i, j]] = 1
  return flips


def totals(
  tasks: KnapsackTasks, sets: Int[Array, "B M I"]
) -> tuple[Int[Array, "B M"], Int[Array, "B M"]]:
  """(weight, value) of each candidate set of each task."""
  weight = jnp.einsum("BMI,BI->BM", sets, tasks.weights)
  value = jnp.einsum("BMI,BI->BM", sets, tasks.values)
  return weight, value


def set_quality(
  tasks: KnapsackTasks, sets: Int[Array, "B M I"]
) -> Float[Array, "B M"]:
  """value / OPT of each candidate set, 0 where it does not fit."""
  weight, value = totals(tasks, sets)
  q = value.astype(jnp.float32) / tasks.opt[:, None].astype(jnp.float32)
  return jnp.where(weight <= tasks.capacity[:, None], q, 0.0)


def noisy_greedy(
  key: PRNGKeyArray, tasks: KnapsackTasks, noise: float
) -> Int[Array, "B I"]:
  """Greedy by value/weight ratio (× log-normal noise): take items in that
  order while they fit."""
  ratio = tasks.values / tasks.weights
  ratio = ratio * jnp.exp(noise * jax.random.normal(key, ratio.shape))
  order = jnp.argsort(-ratio, axis=1)
  w_sorted = jnp.take_along_axis(tasks.weights, order, axis=1)

  def take(room, w):  # w: [B] weight of the next item of each task.
    fits = w <= room
    return room - jnp.where(fits, w, 0), fits

  _, taken = jax.lax.scan(take, tasks.capacity, w_sorted.T)  # [I, B]
  rows = jnp.arange(order.shape[0])[:, None]
  return jnp.zeros_like(order).at[rows, order].set(taken.T.astype(jnp.int32))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Knapsack(base.Domain):
  """Knapsack-n with bit responses.

  Attributes:
    n: items (2..16).
    improve_random_share: share of improve-mode warm-start targets that are
      a random local move instead of the best improving one.
    greedy_noise: std of the log-normal noise on greedy ratios.
    sft_mode_probs: (base, improve, diverge) shares of warm-start examples.
  """

  name = "knapsack"
  n: int = 10
  improve_random_share: float = 0.5
  greedy_noise: float = 0.5
  sft_mode_probs: tuple[float, float, float] = (0.4, 0.4, 0.2)

  def __post_init__(self):
    checks.positive_int("Knapsack.n", self.n, minimum=2)
    if self.n > MAX_ITEMS:
      raise ValueError(
        f"Knapsack.n must be <= {MAX_ITEMS} (OPT enumerates "
        f"2^n masks); got Knapsack.n={self.n}"
      )
    base.check_share("Knapsack.improve_random_share", self.improve_random_share)
    checks.in_range("Knapsack.greedy_noise", self.greedy_noise, 0, 10)
    base.check_mode_probs("Knapsack.sft_mode_probs", self.sft_mode_probs)

  @property
  def prompt_len(self) -> int:
    return 3 * self.n + 6

  @property
  def response_len(self) -> int:
    return self.n

  @property
  def vocab_size(self) -> int:
    return BIT_0 + 2

  @property
  def answer_shape(self) -> tuple[int, ...]:
    return (self.n,)

  @property
  def embed_dim(self) -> int:
    return self.n

  def sample_tasks(self, key: PRNGKeyArray, n: int) -> KnapsackTasks:
    checks.positive_int("n", n)
    k_w, k_v = jax.random.split(key)
    w = jax.random.randint(k_w, (n, self.n), 1, 10, jnp.int32)
    v = jax.random.randint(k_v, (n, self.n), 1, 10, jnp.int32)
    cap = jnp.sum(w, axis=1) // 2
    masks = jnp.asarray(all_masks(self.n))
    weight = jnp.einsum("MI,BI->BM", masks, w)
    value = jnp.einsum("MI,BI->BM", masks, v)
    opt = jnp.max(jnp.where(weight <= cap[:, None], value, 0), axis=1)
    return KnapsackTasks(weights=w, values=v, capacity=cap, opt=opt)

  def build_prompt(
    self, tasks: KnapsackTasks, prev: Int[Array, "B I"], mode: Int[Array, "B"]
  ) -> Int[Array, "B P"]:
    b = prev.shape[0]
    items = jnp.stack([tasks.weights, tasks.values], axis=2).reshape(b, -1)
    cap = jnp.stack([tasks.capacity // 10, tasks.capacity % 10], axis=1)
    prev_tokens = jnp.where(prev < 0, base.BLANK, BIT_0 + prev)
    sep = jnp.full((b, 1), base.SEP, jnp.int32)
    return jnp.concatenate(
      [
        jnp.full((b, 1), base.BOS, jnp.int32),
        items,
        sep,
        cap,
        sep,
        base.prompt_tail(prev_tokens.astype(jnp.int32), mode),
      ],
      axis=1,
    ).astype(jnp.int32)

  def step_mask(
    self,
    tasks: KnapsackTasks,
    prev: Int[Array, "B I"],
    mode: Int[Array, "B"],
    response: Int[Array, "B R"],
    t,
  ) -> Bool[Array, "B V"]:
    """Either bit, always (infeasible sets are allowed; they score 0)."""
    del tasks, mode, t
    ids = jnp.arange(self.vocab_size)[None, :]
    return jnp.broadcast_to(ids >= BIT_0, (prev.shape[0], self.vocab_size))

  def apply_response(
    self,
    tasks: KnapsackTasks,
    prev: Int[Array, "B I"],
    mode: Int[Array, "B"],
    response: Int[Array, "B R"],
  ) -> Int[Array, "B I"]:
    del tasks, prev, mode
    return jnp.clip(response - BIT_0, 0, 1).astype(jnp.int32)

  def quality(
    self, tasks: KnapsackTasks, answer: Int[Array, "B I"]
  ) -> Float[Array, "B"]:
    q = set_quality(tasks, jnp.maximum(answer, 0)[:, None])[:, 0]
    return jnp.where(jnp.any(answer < 0, axis=1), 0.0, q)

  def success(
    self, tasks: KnapsackTasks, answer: Int[Array, "B I"]
  ) -> Bool[Array, "B"]:
    weight, value = totals(tasks, jnp.maximum(answer, 0)[:, None])
    return (
      (weight[:, 0] <= tasks.capacity)
      & (value[:, 0] == tasks.opt)
      & jnp.all(answer >= 0, axis=1)
    )

  def embed(self, answer: Int[Array, "B I"]) -> Float[Array, "B E"]:
    """The bit vector (a blank answer is all zeros)."""
    return jnp.maximum(answer, 0).astype(jnp.float32)

  def _neighbours(
    self, prev: Int[Array, "B I"]
  ) -> tuple[Int[Array, "B M I"], Bool[Array, "B M"]]:
    """Local-move candidates of prev and which are legal moves."""
    flips = jnp.asarray(local_moves(self.n))  # [M, I]
    cand = prev[:, None, :] ^ flips[None]
    changed = jnp.sum(flips[None] * (2 * prev[:, None, :] - 1), axis=2)
    # A pair flip is a swap only when one bit was set and the other not.
    legal = (jnp.sum(flips, axis=1)[None] == 1) | (changed == 0)
    return cand, legal

  def sft_examples(self, key: PRNGKeyArray, n: int) -> base.SFTBatch:
    checks.positive_int("n", n)
    ks = jax.random.split(key, 8)
    tasks = self.sample_tasks(ks[0], n)
    mode = base.sample_modes(ks[1], n, self.sft_mode_probs)
    greedy = noisy_greedy(ks[2], tasks, self.greedy_noise)
    prev = noisy_greedy(ks[3], tasks, self.greedy_noise)
    moves = jax.random.randint(ks[4], (n,), 0, 3)
    for i in range(2):
      cand, legal = self._neighbours(prev)
      pick = _uniform_choice(jax.random.fold_in(ks[5], i), legal)
      moved = jnp.take_along_axis(cand, pick[:, None, None], axis=1)[:, 0]
      prev = jnp.where((i < moves)[:, None], moved, prev)
    q_prev = self.quality(tasks, prev)
    # Improve mode: best improving local move, or a random local move.
    cand, legal = self._neighbours(prev)
    q_cand = jnp.where(legal, set_quality(tasks, cand), -1.0)
    best = jnp.argmax(q_cand, axis=1)
    improving = jnp.max(q_cand, axis=1) > q_prev
    best_set = jnp.take_along_axis(cand, best[:, None, None], axis=1)[:, 0]
    best_set = jnp.where(improving[:, None], best_set, prev)
    rand = _uniform_choice(ks[6], legal)
    rand_set = jnp.take_along_axis(cand, rand[:, None, None], axis=1)[:, 0]
    swap = jax.random.bernoulli(ks[7], self.improve_random_share, (n,))
    improve = jnp.where(swap[:, None], rand_set, best_set)
    diverge = self._diverge_target(
      jax.random.fold_in(key, 1), tasks, prev, q_prev
    )
    m = mode[:, None]
    target = jnp.select(
      [m == base.MODE_BASE, m == base.MODE_IMPROVE], [greedy, improve], diverge
    )
    prev = jnp.where(m == base.MODE_BASE, -1, prev)
    return base.SFTBatch(
      tasks=tasks,
      prev=prev,
      mode=mode,
      target=(BIT_0 + target).astype(jnp.int32),
    )

  def _diverge_target(
    self,
    key: PRNGKeyArray,
    tasks: KnapsackTasks,
    prev: Int[Array, "B I"],
    q_prev: Float[Array, "B"],
  ) -> Int[Array, "B I"]:
    """A uniform different feasible set with q >= q_prev - DIVERGE_SLACK,
    else the best different feasible set."""
    b = prev.shape[0]
    masks = jnp.broadcast_to(
      jnp.asarray(all_masks(self.n)), (b, 2**self.n, self.n)
    )
    q = set_quality(tasks, masks)  # [B, M]
    weight, _ = totals(tasks, masks)
    other = jnp.any(masks != prev[:, None, :], axis=2)
    ok = other & (weight <= tasks.capacity[:, None])
    eligible = ok & (q >= q_prev[:, None] - DIVERGE_SLACK)
    fallback = jnp.argmax(jnp.where(ok, q, -1.0), axis=1)
    pick = jnp.where(
      jnp.any(eligible, axis=1), _uniform_choice(key, eligible), fallback
    )
    return jnp.take_along_axis(masks, pick[:, None, None], axis=1)[:, 0]


def _uniform_choice(
  key: PRNGKeyArray, allowed: Bool[Array, "B M"]
) -> Int[Array, "B"]:
  """A uniform index among the allowed ones of each row."""
  logits = jnp.where(allowed, 0.0, -jnp.inf)
  return jax.random.categorical(key, logits, axis=1).astype(jnp.int32)
