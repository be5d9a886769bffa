"""LYNX cue events: the reference detector and its on-device twin.

Paper: LYNX (Akgül et al., arXiv 2512.05325; spec `llm_exits.md` §2.2). A
cue event is where a reasoning trace says "hmm", "wait", "alternatively"
(configurable). The official semantics, which `reference_events` implements
on the host: decode every generated token on its own, concatenate the
pieces, lower-case, find every substring occurrence of every cue (so
"await" and "waiting" count, a cue may span tokens); the event is the first
token whose cumulative decoded length reaches the end of the match.

`CueDetector` decides the same thing inside a jitted decoding loop, one
token at a time, with static shapes: a [V, P] table of each token's
lower-cased piece as code points and a rolling buffer of the last
K = (longest cue − 1) characters per row. Appending the new piece to the
buffer and testing every cue against every match end that falls inside the
new piece is exact: a cue that lies inside one token (what a vocabulary
mask would flag) and a cue that spans tokens (what a table of multi-token
cues would flag) are both matches ending in the new piece.

Known disagreement with the reference: it lower-cases the concatenation
while the table lower-cases each piece, and measures lengths before
lower-casing; for the few characters whose lower case has another length
(e.g. "İ" → "i̇") positions can differ. No such character occurs in the
cues, and the tests compare both on real tokenizers.

Axes: B batch, V vocabulary, P longest piece (code points), K buffer.
"""

import dataclasses
import re
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxexit import checks
from jaxexit.typing import Array, Bool, Int

DEFAULT_CUES = ("hmm", "wait", "alternatively")
_PAD = -1  # a buffer slot before the text starts
_NONE = -2  # past the end of a piece


def _check_cues(cues: Sequence[str]) -> tuple[str, ...]:
  cues = tuple(c.lower() for c in cues)
  if not cues or any(not isinstance(c, str) or not c for c in cues):
    raise ValueError(f"cues must be non-empty strings; got cues={cues!r}")
  return cues


def reference_events(
  pieces: Sequence[str], cues: Sequence[str] = DEFAULT_CUES
) -> list[int]:
  """Token indices of the cue events in a decoded trace (§2.2).

  Args:
    pieces: each generated token decoded on its own, in order.
    cues: cue strings (matched lower-cased, as substrings).

  Returns:
    Sorted distinct token indices: for every occurrence of every cue, the
    first token whose cumulative decoded length reaches the match's end.
  """
  cues = _check_cues(cues)
  text = "".join(pieces).lower()
  ends = np.cumsum([len(p) for p in pieces])
  events = set()
  for cue in cues:
    for m in re.finditer(re.escape(cue), text):
      events.add(int(np.searchsorted(ends, m.end(), side="left")))
  return sorted(events)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CueState:
  """Per-row detector state: the last K lower-cased characters.

  Attributes:
    buffer: [B, K] int32 code points, oldest first; -1 before the text.
  """

  buffer: Int[Array, "B K"]


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity (static)
class CueDetector:
  """`step(state, token) -> (state, event)` for a fixed tokenizer and cues.

  Attributes:
    table: [V, P] int32 each token's lower-cased piece as code points,
      padded with -2.
    lengths: [V] int32 code points per piece.
    cues: [C, M] int32 each cue's code points, left-padded with -2 to the
      longest cue M (a padded slot matches anything).
    cue_lengths: [C] int32.
    names: the cue strings.
  """

  table: np.ndarray
  lengths: np.ndarray
  cues: np.ndarray
  cue_lengths: np.ndarray
  names: tuple[str, ...]

  @classmethod
  def build(
    cls,
    decode_token: Callable[[int], str],
    vocab_size: int,
    cues: Sequence[str] = DEFAULT_CUES,
  ) -> "CueDetector":
    """Tables for a tokenizer.

    Args:
      decode_token: id -> the token decoded on its own (as the reference
        decodes each generated token).
      vocab_size: V.
      cues: cue strings.
    """
    names = _check_cues(cues)
    checks.positive_int("vocab_size", vocab_size)
    pieces = [decode_token(i).lower() for i in range(vocab_size)]
    width = max(1, max(len(p) for p in pieces))
    table = np.full((vocab_size, width), _NONE, np.int32)
    for i, p in enumerate(pieces):
      table[i, : len(p)] = [ord(ch) for ch in p]
    longest = max(len(c) for c in names)
    cue_table = np.full((len(names), longest), _NONE, np.int32)
    for j, c in enumerate(names):
      cue_table[j, longest - len(c) :] = [ord(ch) for ch in c]
    return cls(
      table=table,
      lengths=np.array([len(p) for p in pieces], np.int32),
      cues=cue_table,
      cue_lengths=np.array([len(c) for c in names], np.int32),
      names=names,
    )

  @property
  def buffer_len(self) -> int:
    """K = longest cue − 1 (at least 1)."""
    return max(int(self.cues.shape[1]) - 1, 1)

  def init(self, batch: int) -> CueState:
    """No text yet."""
    return CueState(jnp.full((batch, self.buffer_len), _PAD, jnp.int32))

  def step(
    self, state: CueState, token: Int[Array, "B"]
  ) -> tuple[CueState, Bool[Array, "B"]]:
    """Appends `token`'s piece; True where a cue match ends inside it."""
    k, width = self.buffer_len, self.table.shape[1]
    piece = jnp.asarray(self.table)[token]  # [B, P]
    n = jnp.asarray(self.lengths)[token]  # [B]
    text = jnp.concatenate([state.buffer, piece], axis=1)  # [B, K + P]
    m = self.cues.shape[1]
    # Match ends p = K + j for j in [0, P): the window text[p-m+1 .. p].
    ends = k + jnp.arange(width)  # [P]
    offsets = jnp.arange(m) - (m - 1)  # [M]
    idx = ends[:, None] + offsets[None, :]  # [P, M]
    ok_idx = idx >= 0
    windows = jnp.take(text, jnp.maximum(idx, 0), axis=1)  # [B, P, M]
    cues = jnp.asarray(self.cues)  # [C, M]
    any_char = cues == _NONE  # left padding of a shorter cue
    same = (windows[:, :, None, :] == cues[None, None]) & ok_idx[None, :, None]
    match = jnp.all(same | any_char[None, None], axis=-1)  # [B, P, C]
    inside = jnp.arange(width)[None, :] < n[:, None]  # [B, P]
    event = jnp.any(match & inside[..., None], axis=(1, 2))
    keep = n[:, None] + jnp.arange(k)[None, :]  # the last K characters
    buffer = jnp.take_along_axis(text, keep, axis=1)
    return CueState(buffer), event

  def events(self, tokens: Int[Array, "B T"]) -> Bool[Array, "B T"]:
    """[B, T] the step events over whole sequences (a `lax.scan`)."""

    def body(state, token):
      state, event = self.step(state, token)
      return state, event

    _, events = jax.lax.scan(
      body, self.init(tokens.shape[0]), jnp.swapaxes(tokens, 0, 1)
    )
    return jnp.swapaxes(events, 0, 1)
