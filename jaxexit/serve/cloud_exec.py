"""The cloud's compute: one model, many sessions' caches swapped in.

CE-CoLLM (spec `docs/papers/llm_exits.md` §4.2) keeps each session's
cloud-side state in the context manager (`jaxexit.serve.sessions`); this
module runs it. `CloudExecutor` holds one `split.CloudModel` (blocks
k..L-1) and one `split.EdgeModel` (blocks 0..k-1, used only by the
cloud-only baseline), both batch 1, and swaps a session's caches in before
a call and out after it, under one lock.

* `catch_up`: the exact catch-up of CE-CoLLM's collaborative mode (the
  spec's EE-LLM-style recomputation, §1.1): blocks k..L-1 over every
  uploaded position not yet run, bucketed as `split.CloudModel` does.
* `catch_up_many`: the catch-ups of several sessions in one compiled call:
  their caches stacked on the batch axis (padded with empty rows to a
  power of two ≤ `max_batch`), their pending states right-padded with
  invalid positions to the longest, then split back per session. Rows
  never mix (attention and the caches are per row, padding is invalid),
  so each session gets its own catch-up's answer; what is shared is one
  read of the weights per call. `jaxexit.serve.cloud_batch` gathers
  concurrent requests for it.
* `full_step`: the cloud-only baseline: the whole model over new token
  ids, padded to the same buckets (padding positions invalid, so no-ops).

The caches are donated on every call, so a session's stored caches are
stale from the moment they are swapped in until the new ones are
returned; the caller stores the returned caches (or, after a failure,
drops them: the session's uploaded states suffice to rebuild them).

Axes: T positions of a call, D width, V vocabulary.
"""

import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxexit import checks
from jaxexit.serve import split


class CatchUp(NamedTuple):
  """One session's catch-up request (`CloudExecutor.catch_up`'s args).

  Attributes:
    caches: the session's caches, or None for fresh ones (start 0).
    hidden: [T, D] float32 layer-k states.
    start: the first position.
  """

  caches: Any
  hidden: np.ndarray
  start: int


class StepResult(NamedTuple):
  """One call's answer.

  Attributes:
    token: greedy next token id (argmax of the float32 logits).
    prob: its softmax probability, in [0, 1].
    caches: the session's new opaque caches (to store back).
    ran: positions run by this call (cloud compute, in positions).
  """

  token: int
  prob: float
  caches: Any
  ran: int


def _nbytes(tree) -> int:
  return int(sum(x.nbytes for x in jax.tree.leaves(tree)))


def greedy(logits) -> tuple[int, float]:
  """(argmax, its softmax probability) of [V] logits, computed in float64
  from float32 values (the argmax of float32, as `generate_full`)."""
  x = np.asarray(logits, np.float32)
  token = int(np.argmax(x))
  z = np.exp(x.astype(np.float64) - float(x[token]))
  return token, float(1.0 / z.sum())


class CloudExecutor:
  """Runs sessions' catch-ups and cloud-only steps on one shared model.

  Args:
    backbone: the full `DecoderBackbone`.
    k: split layer, 1 ≤ k ≤ L - 1.
    max_len: cache positions per session.
    buckets: compiled chunk lengths (see `split.CloudModel`).
    max_batch: most sessions in one `catch_up_many` call.
  """

  def __init__(
    self, backbone, k: int, *, max_len: int, buckets, max_batch: int = 1
  ):
    split.check_split(backbone.num_layers, k)
    checks.positive_int("max_len", max_len)
    checks.positive_int("max_batch", max_batch)
    self.k, self.max_len, self.max_batch = k, max_len, max_batch
    self._backbone = backbone
    self._batched: dict[int, split.CloudModel] = {}  # By batch size.
    # One session's empty caches (only ever copied, never donated).
    self._empty = split.cloud_init(backbone, k, 1, max_len)
    self.d_model, self.vocab_size = backbone.d_model, backbone.vocab_size
    self._cloud = split.CloudModel(
      backbone, k, batch=1, max_len=max_len, buckets=buckets
    )
    self._edge = split.EdgeModel(backbone, k, batch=1, max_len=max_len)
    self.buckets = self._cloud.buckets
    self.lock = threading.Lock()
    cloud_bytes = _nbytes(self._cloud.caches)
    # Reported per session to the store's budget (caches are preallocated
    # at max_len, so this is their size from the first call on).
    self.cache_nbytes = {
      "split": cloud_bytes,
      "full": cloud_bytes + _nbytes(self._edge.state),
    }

  def catch_up(self, caches, hidden: np.ndarray, start: int) -> StepResult:
    """Blocks k..L-1 over positions start, ..., start + T - 1.

    Args:
      caches: the session's caches, or None for fresh ones (start 0).
      hidden: [T, D] float32 layer-k states.
      start: the first position.
    """
    positions = np.arange(start, start + hidden.shape[0])[None]  # [1, T]
    with self.lock:
      if caches is None:
        self._cloud.reset()
      else:
        self._cloud.caches = caches
      logits = self._cloud.catch_up(hidden[None], positions)  # [1, V]
      caches = self._cloud.caches
    return StepResult(*greedy(logits[0]), caches, hidden.shape[0])

  def catch_up_many(self, requests: Sequence[CatchUp]) -> list[StepResult]:
    """`catch_up` of each request, in one compiled call when there are
    several (see the module doc); results in request order."""
    n = len(requests)
    if not 1 <= n <= self.max_batch:
      raise ValueError(f"{n} requests; expected 1..max_batch={self.max_batch}")
    if n == 1:
      return [self.catch_up(*requests[0])]
    b = min(1 << (n - 1).bit_length(), self.max_batch)
    t = max(r.hidden.shape[0] for r in requests)
    hidden = np.zeros((b, t, self.d_model), np.float32)
    positions = np.zeros((b, t), np.int32)
    valid = np.zeros((b, t), bool)
    for i, r in enumerate(requests):
      m = r.hidden.shape[0]
      hidden[i, :m] = r.hidden
      positions[i, :m] = r.start + np.arange(m)
      valid[i, :m] = True
    with self.lock:
      model = self._batched.get(b)
      if model is None:
        model = self._batched[b] = split.CloudModel(
          self._backbone,
          self.k,
          batch=b,
          max_len=self.max_len,
          buckets=self.buckets,
        )
      empty = self._empty
      rows = [empty if r.caches is None else r.caches for r in requests]
      rows += [empty] * (b - n)
      model.caches = jax.tree.map(lambda *x: jnp.concatenate(x), *rows)
      logits = np.asarray(model.catch_up(hidden, positions, valid))  # [b, V]
      caches = model.caches
    return [
      StepResult(
        *greedy(logits[i]),
        jax.tree.map(lambda x, i=i: x[i : i + 1], caches),
        r.hidden.shape[0],
      )
      for i, r in enumerate(requests)
    ]

  def full_step(self, caches, tokens: np.ndarray, start: int) -> StepResult:
    """The whole model over token ids at positions start, ... .

    Args:
      caches: the session's (edge state, cloud caches), or None.
      tokens: [T] int token ids in [0, V).
      start: the first position.
    """
    n = tokens.shape[0]
    with self.lock:
      if caches is None:
        self._edge.reset()
        self._cloud.reset()
      else:
        self._edge.state, self._cloud.caches = caches
      logits = None
      for lo in range(0, n, self.buckets[-1]):
        chunk = tokens[lo : lo + self.buckets[-1]]
        t = self._cloud.bucket(chunk.shape[0])
        ids = np.zeros((1, t), np.int32)
        ids[0, : chunk.shape[0]] = chunk
        pos = (start + lo + np.arange(t))[None]  # [1, t]
        valid = (np.arange(t) < chunk.shape[0])[None]  # [1, t]
        pos = np.where(valid, pos, 0)
        out = self._edge(ids, pos, valid)
        logits = self._cloud.catch_up(out.hidden, pos, valid)  # [1, V]
      caches = (self._edge.state, self._cloud.caches)
    return StepResult(*greedy(logits[0]), caches, n)

  def warmup(self) -> None:
    """Compiles every bucket of both paths (then forgets the positions)."""
    for t in self.buckets:
      if t > self.max_len:
        break
      self.catch_up(None, np.zeros((t, self.d_model), np.float32), 0)
      self.full_step(None, np.zeros((t,), np.int32), 0)
    with self.lock:
      self._edge.reset()
      self._cloud.reset()
