"""PermSort: sort a digit list by pointing into it (exploratory_iteration.md
§11.2).

A task is x ∈ {0..9}^n (duplicates allowed). The prompt is
`BOS x SEP prev MODE` (prev shown as BLANK for a base task); the response is
n pointer tokens, a permutation of positions of the *source*: x for a base
task, prev for a self-iteration step. Decoding masks used pointers, so every
response is a valid permutation and "keep the previous answer" is the
identity pointer sequence. Quality q = 1 - inversions / C(n, 2); success =
fully sorted.

Warm start ("noisy reviser"): base mode applies 0-2 odd-even transposition
passes to x; improve mode applies, with probability 1 - improve_random_share,
one pass of random parity to prev, else one random adjacent swap (which
mostly breaks order, so the warm-started policy barely improves itself:
`improve_random_share` is the knob that sets its zero-shot self-improvement,
§11.6); diverge mode re-sorts x with one pass more or fewer than prev's and
the other starting parity (a different permutation of similar quality).
Previous answers of improve/diverge examples are x after 0..n passes plus
0-2 random adjacent swaps: everything from the warm start's own answers to
fully sorted lists, the range the RL policy will visit.

The list helpers below (passes, swaps, inversions on the first `length`
entries of each row) are shared with `sortchain`.

Axes: B tasks, L list length (n), P prompt tokens, R response tokens (= n),
V vocabulary.
"""

import dataclasses

import jax
import jax.numpy as jnp

from jaxexit import checks
from jaxexit.exploratory_iteration.domains import base
from jaxexit.typing import Array, Bool, Float, Int, PRNGKeyArray

PTR_0 = base.NUM_SHARED_TOKENS  # Pointer to position i is PTR_0 + i.


def gather(x: Int[Array, "B L"], src: Int[Array, "B L"]) -> Int[Array, "B L"]:
  """`x[b, src[b, i]]`."""
  return jnp.take_along_axis(x, src, axis=1)


def inversions(
  values: Int[Array, "B L"], length: Int[Array, "B"]
) -> Int[Array, "B"]:
  """Pairs i < j < length with values[i] > values[j]."""
  pos = jnp.arange(values.shape[1])
  inside = pos[None, :] < length[:, None]  # [B, L]
  pairs = (
    (pos[:, None] < pos[None, :])[None]
    & inside[:, :, None]
    & inside[:, None, :]
  )  # [B, L, L]
  greater = values[:, :, None] > values[:, None, :]
  return jnp.sum(pairs & greater, axis=(1, 2), dtype=jnp.int32)


def sortedness(
  values: Int[Array, "B L"], length: Int[Array, "B"]
) -> Float[Array, "B"]:
  """1 - inversions / C(length, 2), and 0 if an entry before `length` is
  negative (a blank answer)."""
  pairs = jnp.maximum(length * (length - 1) // 2, 1).astype(jnp.float32)
  q = 1.0 - inversions(values, length).astype(jnp.float32) / pairs
  pos = jnp.arange(values.shape[1])[None, :]
  blank = jnp.any((values < 0) & (pos < length[:, None]), axis=1)
  return jnp.where(blank, 0.0, q)


def odd_even_pass(
  values: Int[Array, "B L"], parity: Int[Array, "B"], length: Int[Array, "B"]
) -> Int[Array, "B L"]:
  """Source indices of one odd-even transposition pass: the pairs
  (i, i+1) with i % 2 == parity and i + 1 < length are swapped where
  strictly out of order (stable)."""
  pos = jnp.arange(values.shape[1])[None, :]
  nxt = jnp.roll(values, -1, axis=1)
  prv = jnp.roll(values, 1, axis=1)
  par = parity[:, None]
  left = (pos % 2 == par) & (pos + 1 < length[:, None])
  right = ((pos - 1) % 2 == par) & (pos >= 1) & (pos < length[:, None])
  src = jnp.where(left & (values > nxt), pos + 1, pos)
  return jnp.where(right & (prv > values), pos - 1, src)


def adjacent_swap(
  key: PRNGKeyArray, length: Int[Array, "B"], width: int
) -> Int[Array, "B L"]:
  """Source indices swapping one uniform pair (j, j+1), j + 1 < length."""
  u = jax.random.uniform(key, length.shape)
  j = jnp.floor(u * (length - 1)).astype(jnp.int32)[:, None]
  pos = jnp.arange(width)[None, :]
  src = jnp.where(pos == j, j + 1, pos)
  return jnp.where(pos == j + 1, j, src)


def passes_order(
  x: Int[Array, "B L"],
  num_passes: Int[Array, "B"],
  start_parity: Int[Array, "B"],
  length: Int[Array, "B"],
  max_passes: int,
) -> Int[Array, "B L"]:
  """Order (indices into x) after `num_passes` alternating-parity passes
  starting with `start_parity` (at most `max_passes`, static)."""
  order = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape)

  def body(i, order):
    src = odd_even_pass(gather(x, order), (start_parity + i) % 2, length)
    return jnp.where((i < num_passes)[:, None], gather(order, src), order)

  return jax.lax.fori_loop(0, max_passes, body, order)


def pointers_into(
  prev_order: Int[Array, "B L"], target_order: Int[Array, "B L"]
) -> Int[Array, "B L"]:
  """Positions in prev = x[prev_order] that spell x[target_order]."""
  b, width = prev_order.shape
  rows = jnp.arange(b)[:, None]
  inverse = (
    jnp.zeros_like(prev_order)
    .at[rows, prev_order]
    .set(jnp.broadcast_to(jnp.arange(width), (b, width)))
  )
  return gather(inverse, target_order)


def random_swaps(
  key: PRNGKeyArray,
  order: Int[Array, "B L"],
  num_swaps: Int[Array, "B"],
  length: Int[Array, "B"],
  max_swaps: int,
) -> Int[Array, "B L"]:
  """`order` after `num_swaps` random adjacent swaps."""

  def body(i, order):
    src = adjacent_swap(jax.random.fold_in(key, i), length, order.shape[1])
    return jnp.where((i < num_swaps)[:, None], gather(order, src), order)

  return jax.lax.fori_loop(0, max_swaps, body, order)


def pointer_mask(
  response: Int[Array, "B R"],
  t,
  length: Int[Array, "B"],
  ptr_0: int,
  vocab_size: int,
) -> Bool[Array, "B V"]:
  """Pointer tokens to positions < length not used by response[:, :t]."""
  steps = jnp.arange(response.shape[1])[None, :]
  ids = jnp.arange(vocab_size)
  used = jnp.any(
    (response[:, :, None] == ids[None, None, :]) & (steps < t)[:, :, None],
    axis=1,
  )  # [B, V]
  is_ptr = (ids[None, :] >= ptr_0) & (ids[None, :] < ptr_0 + length[:, None])
  return is_ptr & ~used


def noisy_reviser(
  key: PRNGKeyArray,
  x: Int[Array, "B L"],
  length: Int[Array, "B"],
  mode: Int[Array, "B"],
  *,
  max_base_passes: int,
  improve_random_share: float,
) -> tuple[Int[Array, "B L"], Int[Array, "B L"]]:
  """Warm-start previous answers and target pointers (module docstring).

  Only the first `length` entries of each row of `x` (the base-mode source)
  take part; later positions stay in place.

  Returns:
    (prev [B, L], -1 where `mode` is MODE_BASE; target pointer indices
    [B, L] into x for MODE_BASE rows, into prev otherwise).
  """
  b, width = x.shape
  ks = jax.random.split(key, 10)
  parity = jax.random.randint(ks[0], (b,), 0, 2)
  base_passes = jax.random.randint(ks[1], (b,), 0, max_base_passes + 1)
  base_order = passes_order(x, base_passes, parity, length, max_base_passes)
  # Previous answers: 0..width passes, then 0-2 random adjacent swaps.
  prev_passes = jax.random.randint(ks[2], (b,), 0, width + 1)
  prev_passes = jnp.minimum(prev_passes, length)
  prev_order = passes_order(x, prev_passes, parity, length, width)
  prev_order = random_swaps(
    ks[3], prev_order, jax.random.randint(ks[4], (b,), 0, 3), length, 2
  )
  prev = gather(x, prev_order)
  # Improve: one random adjacent swap, or one pass of random parity.
  swap = jax.random.bernoulli(ks[5], improve_random_share, (b,))
  pass_src = odd_even_pass(prev, jax.random.randint(ks[6], (b,), 0, 2), length)
  improve_ptr = jnp.where(
    swap[:, None], adjacent_swap(ks[7], length, width), pass_src
  )
  # Diverge: one pass more or fewer than prev, the other start parity.
  step = 2 * jax.random.randint(ks[8], (b,), 0, 2) - 1
  div_passes = prev_passes + step
  div_passes = jnp.where(
    (div_passes < 0) | (div_passes > length), prev_passes - step, div_passes
  )
  div_order = passes_order(x, div_passes, 1 - parity, length, width)
  diverge_ptr = pointers_into(prev_order, div_order)
  m = mode[:, None]
  ptr = jnp.select(
    [m == base.MODE_BASE, m == base.MODE_IMPROVE],
    [base_order, improve_ptr],
    diverge_ptr,
  )
  return jnp.where(m == base.MODE_BASE, -1, prev), ptr


@dataclasses.dataclass(frozen=True, kw_only=True)
class PermSort(base.Domain):
  """PermSort-n with pointer output.

  Attributes:
    n: list length (>= 2).
    improve_random_share: share of improve-mode warm-start targets that are
      one random adjacent swap instead of one odd-even pass (§11.6 knob).
      Measured (n = 8, default `PolicyConfig`, 800 steps of 256 at lr 2e-3,
      seed 0, 256 held-out lists): 0.7 gives q@0 = 0.599 and Δ16 q =
      -0.009 (T = 1, avg@4; greedy +0.0003, a fixed point after one step),
      0.85 gives -0.027 and 0.95 gives -0.020, so 0.7 is the default.
    max_base_passes: base-mode targets apply 0..max_base_passes passes.
    sft_mode_probs: (base, improve, diverge) shares of warm-start examples.
  """

  name = "permsort"
  n: int = 8
  improve_random_share: float = 0.7
  max_base_passes: int = 2
  sft_mode_probs: tuple[float, float, float] = (0.4, 0.45, 0.15)

  def __post_init__(self):
    checks.positive_int("PermSort.n", self.n, minimum=2)
    base.check_share("PermSort.improve_random_share", self.improve_random_share)
    checks.positive_int(
      "PermSort.max_base_passes", self.max_base_passes, minimum=0
    )
    base.check_mode_probs("PermSort.sft_mode_probs", self.sft_mode_probs)

  @property
  def prompt_len(self) -> int:
    return 2 * self.n + 3

  @property
  def response_len(self) -> int:
    return self.n

  @property
  def vocab_size(self) -> int:
    return PTR_0 + self.n

  @property
  def answer_shape(self) -> tuple[int, ...]:
    return (self.n,)

  @property
  def embed_dim(self) -> int:
    return self.n * base.NUM_DIGITS

  def _length(self, b: int) -> Int[Array, "B"]:
    return jnp.full((b,), self.n, jnp.int32)

  def sample_tasks(self, key: PRNGKeyArray, n: int) -> Int[Array, "B L"]:
    """[n, L] int32 digit lists."""
    checks.positive_int("n", n)
    return jax.random.randint(key, (n, self.n), 0, base.NUM_DIGITS, jnp.int32)

  def build_prompt(
    self,
    tasks: Int[Array, "B L"],
    prev: Int[Array, "B L"],
    mode: Int[Array, "B"],
  ) -> Int[Array, "B P"]:
    prev_tokens = jnp.where(prev < 0, base.BLANK, prev)
    b = tasks.shape[0]
    return jnp.concatenate(
      [
        jnp.full((b, 1), base.BOS, jnp.int32),
        tasks.astype(jnp.int32),
        jnp.full((b, 1), base.SEP, jnp.int32),
        base.prompt_tail(prev_tokens.astype(jnp.int32), mode),
      ],
      axis=1,
    )

  def step_mask(
    self,
    tasks: Int[Array, "B L"],
    prev: Int[Array, "B L"],
    mode: Int[Array, "B"],
    response: Int[Array, "B R"],
    t,
  ) -> Bool[Array, "B V"]:
    del prev, mode
    return pointer_mask(
      response, t, self._length(tasks.shape[0]), PTR_0, self.vocab_size
    )

  def source(
    self,
    tasks: Int[Array, "B L"],
    prev: Int[Array, "B L"],
    mode: Int[Array, "B"],
  ) -> Int[Array, "B L"]:
    """What the pointers index: x for base tasks, else prev."""
    return jnp.where((mode == base.MODE_BASE)[:, None], tasks, prev)

  def apply_response(
    self,
    tasks: Int[Array, "B L"],
    prev: Int[Array, "B L"],
    mode: Int[Array, "B"],
    response: Int[Array, "B R"],
  ) -> Int[Array, "B L"]:
    src = jnp.clip(response - PTR_0, 0, self.n - 1)
    return gather(self.source(tasks, prev, mode), src)

  def quality(
    self, tasks: Int[Array, "B L"], answer: Int[Array, "B L"]
  ) -> Float[Array, "B"]:
    return sortedness(answer, self._length(tasks.shape[0]))

  def success(
    self, tasks: Int[Array, "B L"], answer: Int[Array, "B L"]
  ) -> Bool[Array, "B"]:
    length = self._length(tasks.shape[0])
    return (inversions(answer, length) == 0) & jnp.all(answer >= 0, axis=1)

  def embed(self, answer: Int[Array, "B L"]) -> Float[Array, "B E"]:
    """Flattened one-hot digits (a blank entry is all zeros)."""
    onehot = jax.nn.one_hot(answer, base.NUM_DIGITS, dtype=jnp.float32)
    return onehot.reshape(answer.shape[0], -1)

  def sft_examples(self, key: PRNGKeyArray, n: int) -> base.SFTBatch:
    checks.positive_int("n", n)
    k_x, k_mode, k_rev = jax.random.split(key, 3)
    x = self.sample_tasks(k_x, n)
    mode = base.sample_modes(k_mode, n, self.sft_mode_probs)
    prev, ptr = noisy_reviser(
      k_rev,
      x,
      self._length(n),
      mode,
      max_base_passes=self.max_base_passes,
      improve_random_share=self.improve_random_share,
    )
    return base.SFTBatch(
      tasks=x, prev=prev, mode=mode, target=(PTR_0 + ptr).astype(jnp.int32)
    )
