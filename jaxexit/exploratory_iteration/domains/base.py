"""The interface of an ExIt synthetic domain (`exploratory_iteration.md` §11.1).

A domain turns fixed-shape task pytrees into prompts for a tiny decoder LM,
constrains its response token by token, turns a response into an answer and
scores the answer with a verifier in [0, 1]. Every method is a pure jnp
function with static shapes, so a whole ExIt step (sampling, verifying,
buffer update) compiles once and `jax.vmap`s over seeds. Domains are frozen
dataclasses: hashable, so they are static arguments of `jax.jit`.

Self-iteration: a prompt carries the task, the previous answer and a mode
token, MODE_BASE (answer from scratch; the previous answer is shown as
BLANK), MODE_IMPROVE or MODE_DIVERGE (rewrite the previous answer). A
"blank" answer is all -1; its quality is 0.

Token ids shared by every domain: the digits 0..9 are their own ids, then
BOS, SEP, BLANK and the three mode tokens; a domain's own tokens start at
NUM_SHARED_TOKENS.

Axes: B tasks (batch), P prompt tokens, R response tokens, V vocabulary,
A answer length, E answer-embedding width.
"""

import abc
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxexit import checks
from jaxexit.typing import Array, Bool, Float, Int, PRNGKeyArray, PyTree

MODE_BASE = 0
MODE_IMPROVE = 1
MODE_DIVERGE = 2
NUM_MODES = 3

NUM_DIGITS = 10
BOS = 10
SEP = 11
BLANK = 12
MODE_TOKEN_0 = 13  # MODE_TOKEN_0 + mode: BASE, IMP, DIV.
NUM_SHARED_TOKENS = 16


class SFTBatch(NamedTuple):
  """Supervised warm-start examples (unpacks as a 4-tuple).

  Attributes:
    tasks: the domain's task pytree, leading axis B.
    prev: [B, A] int32 previous answers (blank where mode is MODE_BASE).
    mode: [B] int32 mode of each example.
    target: [B, R] int32 target response tokens (valid under the domain's
      step masks).
  """

  tasks: PyTree
  prev: Array
  mode: Array
  target: Array


class Domain(abc.ABC):
  """A synthetic self-improvement domain (see module docstring).

  Subclasses are frozen dataclasses holding the domain's static sizes and
  warm-start knobs; `name` is the registry key of `make_domain`.
  """

  name: str

  @property
  @abc.abstractmethod
  def prompt_len(self) -> int:
    """P, the fixed prompt length."""

  @property
  @abc.abstractmethod
  def response_len(self) -> int:
    """R, the fixed response length."""

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """V."""

  @property
  @abc.abstractmethod
  def answer_shape(self) -> tuple[int, ...]:
    """Shape of one task's answer, `(A,)`."""

  @property
  @abc.abstractmethod
  def embed_dim(self) -> int:
    """E, the width of `embed`."""

  @abc.abstractmethod
  def sample_tasks(self, key: PRNGKeyArray, n: int) -> PyTree:
    """`n` fresh base tasks (a pytree with leading axis `n`)."""

  def num_tasks(self, tasks: PyTree) -> int:
    """B, the leading size of the task pytree."""
    return jax.tree.leaves(tasks)[0].shape[0]

  def blank_answer(self, tasks: PyTree) -> Int[Array, "B A"]:
    """All -1: the previous answer of a base task (quality 0)."""
    return jnp.full((self.num_tasks(tasks), *self.answer_shape), -1, jnp.int32)

  @abc.abstractmethod
  def build_prompt(
    self, tasks: PyTree, prev: Int[Array, "B A"], mode: Int[Array, "B"]
  ) -> Int[Array, "B P"]:
    """The [B, P] int32 prompt tokens; `prev` is shown as BLANK where
    `mode` is MODE_BASE."""

  @abc.abstractmethod
  def step_mask(
    self,
    tasks: PyTree,
    prev: Int[Array, "B A"],
    mode: Int[Array, "B"],
    response: Int[Array, "B R"],
    t: Int[Array, ""] | int,
  ) -> Bool[Array, "B V"]:
    """Tokens allowed at response step `t`, given `response[:, :t]` (later
    entries are ignored). Every row allows at least one token."""

  def response_masks(
    self,
    tasks: PyTree,
    prev: Int[Array, "B A"],
    mode: Int[Array, "B"],
    response: Int[Array, "B R"],
  ) -> Bool[Array, "B R V"]:
    """`step_mask` at every step of a teacher-forced `response`."""
    steps = jnp.arange(self.response_len, dtype=jnp.int32)
    masks = jax.vmap(lambda t: self.step_mask(tasks, prev, mode, response, t))(
      steps
    )
    return jnp.moveaxis(masks, 0, 1)  # [B, R, V]

  @abc.abstractmethod
  def apply_response(
    self,
    tasks: PyTree,
    prev: Int[Array, "B A"],
    mode: Int[Array, "B"],
    response: Int[Array, "B R"],
  ) -> Int[Array, "B A"]:
    """The answer a (mask-valid) response encodes."""

  @abc.abstractmethod
  def quality(
    self, tasks: PyTree, answer: Int[Array, "B A"]
  ) -> Float[Array, "B"]:
    """Verifier score in [0, 1] (0 for a blank answer)."""

  @abc.abstractmethod
  def success(
    self, tasks: PyTree, answer: Int[Array, "B A"]
  ) -> Bool[Array, "B"]:
    """The answer is optimal."""

  @abc.abstractmethod
  def embed(self, answer: Int[Array, "B A"]) -> Float[Array, "B E"]:
    """A frozen embedding of answers for the diversity bonus (§3.7)."""

  @abc.abstractmethod
  def sft_examples(self, key: PRNGKeyArray, n: int) -> SFTBatch:
    """`n` examples of the noisy-reviser warm-start mix."""


def prompt_tail(
  prev_tokens: Int[Array, "B A"], mode: Int[Array, "B"]
) -> Int[Array, "B _"]:
  """`prev` tokens (BLANK under MODE_BASE) followed by the mode token."""
  shown = jnp.where((mode == MODE_BASE)[:, None], BLANK, prev_tokens)
  return jnp.concatenate([shown, (MODE_TOKEN_0 + mode)[:, None]], axis=1)


def sample_modes(
  key: PRNGKeyArray, n: int, probs: tuple[float, ...]
) -> Int[Array, "B"]:
  """`n` modes drawn with probabilities `probs` (base, improve, diverge)."""
  logits = jnp.log(jnp.asarray(probs, jnp.float32))
  return jax.random.categorical(key, logits, shape=(n,)).astype(jnp.int32)


def check_mode_probs(name: str, probs: tuple[float, ...]) -> None:
  """Raises unless `probs` is NUM_MODES non-negative numbers summing to 1."""
  if (
    not isinstance(probs, tuple)
    or len(probs) != NUM_MODES
    or any(p < 0 for p in probs)
    or abs(sum(probs) - 1) > 1e-6
  ):
    raise ValueError(
      f"{name} must be a tuple of {NUM_MODES} non-negative "
      f"probabilities summing to 1; got {name}={probs!r}"
    )


def check_share(name: str, value: float) -> None:
  """Raises unless `value` is a probability."""
  checks.in_range(name, value, 0.0, 1.0)
