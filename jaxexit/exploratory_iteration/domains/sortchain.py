"""SortChain-T: multi-turn PermSort (spec `exploratory_iteration.md` §11.4).

Each of T user turns appends m digits to a running list and asks for the
list sorted. The answer of turn t has length ℓ_t = (t + 1)·m and points into
a source: for a base step, the latest iterate of turn t - 1 followed by the
m new digits; for a self-iteration step, the previous iterate of turn t. The
prompt holds the whole history: for every turn u, `USER digits_u SEP
iterate_u` (digits BLANK for turns not asked yet, iterates BLANK from the
current turn on), then `SEP prev MODE`. Responses always have R = T·m tokens:
steps past ℓ_t allow only PAD (log-probability 0), so one policy and sampler
serve every turn. Quality of a turn = PermSort's 1 - inversions / C(ℓ_t, 2);
the return of an episode is the mean per-turn quality of its final
iterates.

A task is one partial history (`SortChainTasks`): the digits, the current
turn and the latest iterates of the earlier turns. `next_turn` records an
answer and moves on, `finish_episode` plays the remaining turns with base
steps (ExIt's expansion, §3.3 step 2), `episode_return` scores a finished
episode and `turn_prefixes` gives the per-turn partial histories that are
inserted into the buffer (§3.2), history-major [B, T, ...].

The warm start is PermSort's noisy reviser on the turn's source; the
earlier iterates of the history come from the same mix.

Axes: B tasks, T turns, L = T·m list slots, P prompt tokens, R response
tokens (= L), V vocabulary.
"""

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxexit import checks
from jaxexit.exploratory_iteration.domains import base, permsort
from jaxexit.typing import Array, Bool, Float, Int, PRNGKeyArray

USER = base.NUM_SHARED_TOKENS
PAD = base.NUM_SHARED_TOKENS + 1
PTR_0 = base.NUM_SHARED_TOKENS + 2

# respond(tasks, prev, mode, key) -> response [B, R], e.g. a partial of
# `jaxexit.exploratory_iteration.policy.sample_responses`.
RespondFn = Callable[..., Array]


class SortChainTasks(NamedTuple):
  """Partial histories of SortChain episodes.

  Attributes:
    digits: [B, L] int32, turn u's digits at u·m .. (u + 1)·m - 1.
    turn: [B] int32 current turn (T once the episode is over).
    history: [B, T, L] int32 latest iterate of each earlier turn (turn u's
      in its first ℓ_u slots), -1 elsewhere.
  """

  digits: Array
  turn: Array
  history: Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class SortChain(base.Domain):
  """SortChain with `turns` turns of `per_turn` digits.

  Attributes:
    turns: T (>= 1).
    per_turn: m digits added per turn (>= 2).
    improve_random_share, max_base_passes, sft_mode_probs: PermSort's
      warm-start knobs.
  """

  name = "sortchain"
  turns: int = 3
  per_turn: int = 3
  improve_random_share: float = 0.7
  max_base_passes: int = 2
  sft_mode_probs: tuple[float, float, float] = (0.4, 0.45, 0.15)

  def __post_init__(self):
    checks.positive_int("SortChain.turns", self.turns)
    checks.positive_int("SortChain.per_turn", self.per_turn, minimum=2)
    base.check_share(
      "SortChain.improve_random_share", self.improve_random_share
    )
    checks.positive_int(
      "SortChain.max_base_passes", self.max_base_passes, minimum=0
    )
    base.check_mode_probs("SortChain.sft_mode_probs", self.sft_mode_probs)

  @property
  def slots(self) -> int:
    """L = T·m."""
    return self.turns * self.per_turn

  @property
  def prompt_len(self) -> int:
    m, t = self.per_turn, self.turns
    return 1 + t * (m + 2) + m * t * (t + 1) // 2 + self.slots + 2

  @property
  def response_len(self) -> int:
    return self.slots

  @property
  def vocab_size(self) -> int:
    return PTR_0 + self.slots

  @property
  def answer_shape(self) -> tuple[int, ...]:
    return (self.slots,)

  @property
  def embed_dim(self) -> int:
    return self.slots * base.NUM_DIGITS

  def _turn(self, tasks: SortChainTasks) -> Int[Array, "B"]:
    """The current turn, clipped for finished episodes."""
    return jnp.minimum(tasks.turn, self.turns - 1)

  def length(self, tasks: SortChainTasks) -> Int[Array, "B"]:
    """ℓ_t of each task's current turn."""
    return (self._turn(tasks) + 1) * self.per_turn

  def sample_tasks(self, key: PRNGKeyArray, n: int) -> SortChainTasks:
    """Fresh episodes at turn 0."""
    checks.positive_int("n", n)
    digits = jax.random.randint(
      key, (n, self.slots), 0, base.NUM_DIGITS, jnp.int32
    )
    return SortChainTasks(
      digits=digits,
      turn=jnp.zeros((n,), jnp.int32),
      history=jnp.full((n, self.turns, self.slots), -1, jnp.int32),
    )

  def build_prompt(
    self, tasks: SortChainTasks, prev: Int[Array, "B L"], mode: Int[Array, "B"]
  ) -> Int[Array, "B P"]:
    m, b = self.per_turn, prev.shape[0]
    turn = self._turn(tasks)[:, None]
    parts = [jnp.full((b, 1), base.BOS, jnp.int32)]
    for u in range(self.turns):
      digits = tasks.digits[:, u * m : (u + 1) * m]
      iterate = tasks.history[:, u, : (u + 1) * m]
      parts += [
        jnp.full((b, 1), USER, jnp.int32),
        jnp.where(turn >= u, digits, base.BLANK),
        jnp.full((b, 1), base.SEP, jnp.int32),
        jnp.where((turn > u) & (iterate >= 0), iterate, base.BLANK),
      ]
    prev_tokens = jnp.where(prev < 0, base.BLANK, prev)
    parts += [
      jnp.full((b, 1), base.SEP, jnp.int32),
      base.prompt_tail(prev_tokens.astype(jnp.int32), mode),
    ]
    return jnp.concatenate(parts, axis=1).astype(jnp.int32)

  def step_mask(
    self,
    tasks: SortChainTasks,
    prev: Int[Array, "B L"],
    mode: Int[Array, "B"],
    response: Int[Array, "B R"],
    t,
  ) -> Bool[Array, "B V"]:
    """Unused pointers below ℓ_t while t < ℓ_t, then only PAD."""
    del prev, mode
    length = self.length(tasks)
    ptr = permsort.pointer_mask(response, t, length, PTR_0, self.vocab_size)
    pad = jnp.arange(self.vocab_size)[None, :] == PAD
    return jnp.where((t < length)[:, None], ptr, pad)

  def base_source(self, tasks: SortChainTasks) -> Int[Array, "B L"]:
    """The latest iterate of the previous turn, then the new digits."""
    turn = self._turn(tasks)
    last = jnp.take_along_axis(
      tasks.history, jnp.maximum(turn - 1, 0)[:, None, None], axis=1
    )[:, 0]
    pos = jnp.arange(self.slots)[None, :]
    new = (pos >= (turn * self.per_turn)[:, None]) & (
      pos < self.length(tasks)[:, None]
    )
    return jnp.where(
      new,
      tasks.digits,
      jnp.where(pos < (turn * self.per_turn)[:, None], last, -1),
    )

  def apply_response(
    self,
    tasks: SortChainTasks,
    prev: Int[Array, "B L"],
    mode: Int[Array, "B"],
    response: Int[Array, "B R"],
  ) -> Int[Array, "B L"]:
    source = jnp.where(
      (mode == base.MODE_BASE)[:, None], self.base_source(tasks), prev
    )
    answer = permsort.gather(
      source, jnp.clip(response - PTR_0, 0, self.slots - 1)
    )
    pos = jnp.arange(self.slots)[None, :]
    return jnp.where(pos < self.length(tasks)[:, None], answer, -1)

  def quality(
    self, tasks: SortChainTasks, answer: Int[Array, "B L"]
  ) -> Float[Array, "B"]:
    """Sortedness of the current turn's answer."""
    return permsort.sortedness(answer, self.length(tasks))

  def success(
    self, tasks: SortChainTasks, answer: Int[Array, "B L"]
  ) -> Bool[Array, "B"]:
    return self.quality(tasks, answer) == 1.0

  def embed(self, answer: Int[Array, "B L"]) -> Float[Array, "B E"]:
    """Flattened one-hot digits (blank slots are all zeros)."""
    onehot = jax.nn.one_hot(answer, base.NUM_DIGITS, dtype=jnp.float32)
    return onehot.reshape(answer.shape[0], -1)

  def next_turn(
    self, tasks: SortChainTasks, answer: Int[Array, "B L"]
  ) -> SortChainTasks:
    """Records `answer` as the current turn's iterate and moves on (rows
    already finished are unchanged)."""
    live = tasks.turn < self.turns
    rows = jnp.arange(answer.shape[0])
    history = tasks.history.at[rows, self._turn(tasks)].set(
      jnp.where(live[:, None], answer, tasks.history[rows, self._turn(tasks)])
    )
    return SortChainTasks(
      digits=tasks.digits,
      turn=tasks.turn + live.astype(jnp.int32),
      history=history,
    )

  def finish_episode(
    self,
    tasks: SortChainTasks,
    answer: Int[Array, "B L"],
    respond: RespondFn,
    key: PRNGKeyArray,
  ) -> SortChainTasks:
    """Records `answer` for the current turn, then plays every remaining
    turn with one base step of `respond(tasks, prev, mode, key)`.

    Returns:
      Finished episodes (turn == T).
    """
    tasks = self.next_turn(tasks, answer)
    mode = jnp.full(tasks.turn.shape, base.MODE_BASE, jnp.int32)

    def play(tasks, i):
      blank = self.blank_answer(tasks)
      response = respond(tasks, blank, mode, jax.random.fold_in(key, i))
      answer = self.apply_response(tasks, blank, mode, response)
      return self.next_turn(tasks, answer), None

    tasks, _ = jax.lax.scan(play, tasks, jnp.arange(self.turns - 1))
    return tasks

  def episode_return(self, tasks: SortChainTasks) -> Float[Array, "B"]:
    """Mean over turns of each final iterate's quality."""
    q = [
      permsort.sortedness(
        tasks.history[:, u],
        jnp.full(tasks.turn.shape, (u + 1) * self.per_turn, jnp.int32),
      )
      for u in range(self.turns)
    ]
    return jnp.mean(jnp.stack(q, axis=1), axis=1)

  def turn_prefixes(
    self, tasks: SortChainTasks
  ) -> tuple[SortChainTasks, Int[Array, "B T L"], Bool[Array, "B T"]]:
    """The per-turn partial histories of (partly) played episodes (§3.2).

    Prefix u of history b is at turn u with the iterates of turns < u as
    its history and turn u's iterate as the previous answer: the start of
    a self-iteration step on turn u. History-major, as
    `jaxexit.exploratory_iteration.episodes.flatten_turns` takes them.

    Returns:
      (prefix tasks with leaves [B, T, ...], prev [B, T, L], valid [B, T]:
      turn u has been played).
    """
    b = tasks.turn.shape[0]
    u = jnp.arange(self.turns, dtype=jnp.int32)
    keep = u[None, :, None, None] > u[None, None, :, None]  # [1, T, T, 1]
    prefixes = SortChainTasks(
      digits=jnp.broadcast_to(
        tasks.digits[:, None], (b, self.turns, self.slots)
      ),
      turn=jnp.broadcast_to(u[None, :], (b, self.turns)),
      history=jnp.where(keep, tasks.history[:, None], -1),
    )
    return prefixes, tasks.history, u[None, :] < tasks.turn[:, None]

  def sft_examples(self, key: PRNGKeyArray, n: int) -> base.SFTBatch:
    checks.positive_int("n", n)
    k_x, k_turn, k_hist, k_mode, k_rev = jax.random.split(key, 5)
    tasks = self.sample_tasks(k_x, n)
    turn = jax.random.randint(k_turn, (n,), 0, self.turns)
    improve = jnp.full((n,), base.MODE_IMPROVE, jnp.int32)
    for u in range(self.turns - 1):  # Earlier iterates: reviser outputs.
      stage = tasks._replace(turn=jnp.full((n,), u, jnp.int32))
      src = self.base_source(stage)
      prev, _ = permsort.noisy_reviser(
        jax.random.fold_in(k_hist, u),
        src,
        self.length(stage),
        improve,
        max_base_passes=self.max_base_passes,
        improve_random_share=self.improve_random_share,
      )
      done = (u < turn)[:, None]
      history = tasks.history.at[:, u].set(jnp.where(done, prev, -1))
      tasks = tasks._replace(history=history)
    tasks = tasks._replace(turn=turn)
    mode = base.sample_modes(k_mode, n, self.sft_mode_probs)
    length = self.length(tasks)
    prev, ptr = permsort.noisy_reviser(
      k_rev,
      self.base_source(tasks),
      length,
      mode,
      max_base_passes=self.max_base_passes,
      improve_random_share=self.improve_random_share,
    )
    pos = jnp.arange(self.slots)[None, :]
    target = jnp.where(pos < length[:, None], PTR_0 + ptr, PAD)
    prev = jnp.where(pos < length[:, None], prev, -1)
    prev = jnp.where((mode == base.MODE_BASE)[:, None], -1, prev)
    return base.SFTBatch(
      tasks=tasks, prev=prev, mode=mode, target=target.astype(jnp.int32)
    )
