"""Per-session context store of the cloud server (CE-CoLLM's context manager).

CE-CoLLM (Jin & Wu, arXiv 2411.02829; docs/papers/llm_exits.md §4.2) splits
a decoder after layer k: the edge runs layers 1..k and uploads every
position's layer-k hidden state; on a request the cloud runs layers k+1..L
over the positions it has not run yet (a catch-up prefill) and returns one
token. A session here is the cloud's memory of one edge conversation:
`states[p]`, position p's uploaded layer-k state (opaque, e.g. the float16
bytes of one `D` vector: 2·D bytes); `cache`, one opaque cloud-side object
(e.g. the KV cache of layers k+1..L); `uploaded`, positions [0, uploaded)
are stored contiguously (`uploaded - 1` is the highest); `processed`,
positions [0, processed) have been run by the cloud.

Memory is bounded in bytes as the caller reports them (nothing is measured
here): each session by `max_session_bytes`, all together by `budget_bytes`,
kept by evicting *other* sessions, least recently used first. An evicted id
leaves a tombstone (bounded in number and age), so its owner learns that it
must re-upload its context (`SessionEvicted`), not that the id never was.

Security: ids are 192-bit random tokens bound to the client that opened
them; naming another client's session, live or evicted, gets the same
`UnknownSession` as a made-up id, so no reply tells that an id exists. The
hash of the edge's weights is recorded; an edge with other weights is
refused (`ModelMismatch`). Pure Python; every method is thread-safe (one
lock; O(1) work per call apart from evictions and `get`'s copy of states).
"""

import dataclasses
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

ID_BYTES = 24  # 192 bits of entropy; `secrets.token_urlsafe` gives 32 chars.


class SessionError(Exception):
  """Base of the store's errors; `status` is what the RPC layer maps."""

  status = "session_error"


class InvalidRequest(SessionError, ValueError):
  """An argument is malformed (empty id, negative size, ...)."""

  status = "invalid_request"


class UnknownSession(SessionError):
  """No session with this id belongs to this client (or it was closed)."""

  status = "unknown_session"

  def __init__(self):  # One message for every case: no oracle.
    super().__init__("no open session with this id belongs to this client")


class SessionEvicted(SessionError):
  """The client's session was evicted to keep the cloud's memory budget."""

  status = "session_evicted"


class ModelMismatch(SessionError):
  """The request comes from an edge whose weights differ from the session's."""

  status = "model_mismatch"


class OutOfOrder(SessionError):
  """An upload does not start where the stored positions end."""

  status = "out_of_order"

  def __init__(self, expected: int, given: int):
    self.expected = expected
    self.given = given
    what = "overlaps stored positions" if given < expected else "leaves a gap"
    super().__init__(
      f"upload starts at position {given} but the session expects position "
      f"{expected} next (positions [0, {expected}) are stored): the upload "
      f"{what}; uploads must continue the session contiguously"
    )


class SessionTooLarge(SessionError):
  """The session would exceed `max_session_bytes`."""

  status = "session_too_large"


class BudgetExceeded(SessionError):
  """The session alone would exceed the store's `budget_bytes`."""

  status = "budget_exceeded"


@dataclasses.dataclass(eq=False)
class Session:
  """One session; `get` returns a copy, detached from the store.

  Attributes:
    session_id: the session's id.
    client_key: the owner's client id, UTF-8 (compared in constant time).
    model_hash: hash of the edge weights the session was opened with.
    states: `states[p]` is position p's uploaded payload, p < `uploaded`.
    states_nbytes: their reported size together, bytes.
    cache: the opaque cloud-side object last stored by `set_cache`, or None.
    cache_nbytes: its reported size, bytes.
    processed: positions [0, processed) have been run by the cloud.
  """

  session_id: str
  client_key: bytes
  model_hash: str
  states: Sequence[Any] = dataclasses.field(default_factory=list)
  states_nbytes: int = 0
  cache: Any = None
  cache_nbytes: int = 0
  processed: int = 0

  @property
  def nbytes(self) -> int:
    """The session's reported size (states + cache), bytes."""
    return self.states_nbytes + self.cache_nbytes

  @property
  def uploaded(self) -> int:
    """Positions [0, uploaded) are stored."""
    return len(self.states)

  @property
  def pending(self) -> range:
    """Positions uploaded but not yet run by the cloud (the catch-up)."""
    return range(self.processed, self.uploaded)


class SessionStats(NamedTuple):
  """Operator view of the store (names session ids: not for clients).

  Attributes:
    sessions: number of live sessions.
    total_bytes: their reported size together, bytes (≤ `budget_bytes`).
    budget_bytes: the store's budget, bytes.
    evictions: sessions evicted since the store was made.
    tombstones: evicted ids still remembered.
    per_session_bytes: session id -> its reported size, bytes.
  """

  sessions: int
  total_bytes: int
  budget_bytes: int
  evictions: int
  tombstones: int
  per_session_bytes: dict[str, int]


def _size(name: str, value: int) -> None:
  if isinstance(value, bool) or value < 0:
    raise InvalidRequest(f"{name} must be an int >= 0, got {value!r}")


class SessionStore:
  """Thread-safe per-session context store with an LRU memory budget.

  Every method takes `client_id`, the caller's authenticated identity, and
  all but `open` the `session_id` that `open` returned to it; `upload`,
  `set_cache` and `get` also take `model_hash`, the hash of the caller's edge
  weights, which must be the session's. They raise `UnknownSession` for an
  id that is not the caller's (or closed, or forgotten), `SessionEvicted`
  for the caller's evicted one and `ModelMismatch` for other weights; those
  that add bytes raise `SessionTooLarge` or `BudgetExceeded` (see `_fit`).
  A refused call changes nothing (evictions happen only when it succeeds).

  Args:
    budget_bytes: bound on all sessions' reported bytes together.
    max_session_bytes: bound on one session's reported bytes.
    clock: monotonic time in seconds, to age tombstones.
    max_tombstones: evicted ids remembered at most (oldest forgotten first).
    tombstone_ttl_s: seconds an evicted id is remembered; later its owner
      gets `UnknownSession`.
  """

  def __init__(
    self,
    budget_bytes: int,
    max_session_bytes: int,
    clock: Callable[[], float] = time.monotonic,
    *,
    max_tombstones: int = 4096,
    tombstone_ttl_s: float = 3600.0,
  ):
    _size("budget_bytes", budget_bytes)
    _size("max_session_bytes", max_session_bytes)
    _size("max_tombstones", max_tombstones)
    if tombstone_ttl_s < 0:
      raise InvalidRequest(f"tombstone_ttl_s must be >= 0: {tombstone_ttl_s}")
    self._budget = budget_bytes
    self._max_session = max_session_bytes
    self._clock = clock
    self._max_tombstones = max_tombstones
    self._tombstone_ttl_s = tombstone_ttl_s
    self._lock = threading.Lock()
    # Insertion order is use order: the first entry is least recently used.
    self._sessions: OrderedDict[str, Session] = OrderedDict()
    # session id -> (client key, eviction time in seconds), oldest first.
    self._tombstones: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
    self._total = 0
    self._evictions = 0

  def open(self, client_id: str, model_hash: str) -> str:
    """Opens an empty session owned by `client_id`.

    Returns:
      The new session id (32 URL-safe characters, 192 random bits).
    """
    if not client_id or not model_hash:
      raise InvalidRequest(f"empty id: {client_id=}, {model_hash=}")
    with self._lock:
      session_id = secrets.token_urlsafe(ID_BYTES)
      while session_id in self._sessions or session_id in self._tombstones:
        session_id = secrets.token_urlsafe(ID_BYTES)  # Never in practice.
      key = client_id.encode()
      self._sessions[session_id] = Session(session_id, key, model_hash)
      return session_id

  def upload(
    self,
    client_id: str,
    session_id: str,
    start_position: int,
    states_bytes: Sequence[Any],
    nbytes: int,
    *,
    model_hash: str,
  ) -> int:
    """Appends the layer-k states of positions start_position, ... .

    Args:
      start_position: the first position uploaded; must equal the session's
        `uploaded`.
      states_bytes: one opaque payload per position, len >= 1.
      nbytes: their reported size together, bytes.

    Returns:
      The session's `uploaded` after the upload (positions stored).

    Raises:
      OutOfOrder: `start_position` is not the session's `uploaded`.
    """
    if not states_bytes:
      raise InvalidRequest("an upload needs at least one position")
    _size("start_position", start_position)
    _size("nbytes", nbytes)
    with self._lock:
      s = self._owned(client_id, session_id, model_hash)
      if start_position != s.uploaded:
        raise OutOfOrder(expected=s.uploaded, given=start_position)
      self._fit(s, nbytes)
      self._sessions.move_to_end(session_id)
      s.states.extend(states_bytes)
      s.states_nbytes += nbytes
      self._total += nbytes
      return s.uploaded

  def set_cache(
    self,
    client_id: str,
    session_id: str,
    cache: Any,
    nbytes: int,
    *,
    processed: int,
    model_hash: str,
  ) -> None:
    """Replaces the session's cloud cache after the cloud has run positions.

    Args:
      cache: the new opaque cloud-side object (replaces the old one).
      nbytes: its reported size, bytes (replaces the old size).
      processed: positions [0, processed) have now been run;
        0 <= processed <= `uploaded`.
    """
    _size("nbytes", nbytes)
    with self._lock:
      s = self._owned(client_id, session_id, model_hash)
      if not 0 <= processed <= s.uploaded:
        raise InvalidRequest(
          f"processed={processed} outside [0, uploaded={s.uploaded}]"
        )
      delta = nbytes - s.cache_nbytes
      self._fit(s, delta)
      self._sessions.move_to_end(session_id)
      s.cache, s.cache_nbytes, s.processed = cache, nbytes, processed
      self._total += delta

  def get(self, client_id: str, session_id: str, *, model_hash: str) -> Session:
    """Returns a snapshot of the session for use and marks it recently used.

    Its `states` is a copy; its `cache` is the stored object itself.
    """
    with self._lock:
      s = self._owned(client_id, session_id, model_hash)
      self._sessions.move_to_end(session_id)
      return dataclasses.replace(s, states=tuple(s.states))

  def close(self, client_id: str, session_id: str) -> None:
    """Frees the caller's session; closing an evicted one forgets its id."""
    with self._lock:
      try:
        s = self._owned(client_id, session_id, None)
      except SessionEvicted:
        del self._tombstones[session_id]
        return
      del self._sessions[session_id]
      self._total -= s.nbytes

  def stats(self) -> SessionStats:
    """Returns counts and reported sizes (bytes) of the whole store."""
    with self._lock:
      self._expire_tombstones()
      return SessionStats(
        sessions=len(self._sessions),
        total_bytes=self._total,
        budget_bytes=self._budget,
        evictions=self._evictions,
        tombstones=len(self._tombstones),
        per_session_bytes={k: s.nbytes for k, s in self._sessions.items()},
      )

  # Everything below runs with the lock held.

  def _owned(
    self, client_id: str, session_id: str, model_hash: str | None
  ) -> Session:
    """The caller's live session; raises if unknown, evicted or mismatched."""
    key = client_id.encode()
    s = self._sessions.get(session_id)
    if s is not None and hmac.compare_digest(s.client_key, key):
      if model_hash is not None and model_hash != s.model_hash:
        raise ModelMismatch(
          "the session was opened by an edge with other model weights "
          f"(hash {s.model_hash!r}, request {model_hash!r}); the edge must "
          "open a new session with its own weights"
        )
      return s
    self._expire_tombstones()
    tomb = self._tombstones.get(session_id)
    if tomb is not None and hmac.compare_digest(tomb[0], key):
      raise SessionEvicted(
        "the session was evicted from the cloud context store to keep its "
        "memory budget; its uploaded context is gone: the edge must open a "
        "new session and re-upload its context from position 0"
      )
    raise UnknownSession()

  def _fit(self, s: Session, delta: int) -> None:
    """Makes room for `delta` more bytes in `s`, evicting others (LRU)."""
    new = s.nbytes + delta
    if new > self._max_session:
      raise SessionTooLarge(
        f"the session would hold {new} bytes, over the per-session cap of "
        f"{self._max_session} bytes"
      )
    # Checked before evicting anything: when even evicting every other
    # session could not make room, nobody is evicted in vain.
    if new > self._budget:
      raise BudgetExceeded(
        f"the session would hold {new} bytes, over the store's whole budget "
        f"of {self._budget} bytes"
      )
    while self._total + delta > self._budget:
      victim = next(v for v in self._sessions.values() if v is not s)
      self._evict(victim)

  def _evict(self, s: Session) -> None:
    del self._sessions[s.session_id]
    self._total -= s.nbytes
    self._evictions += 1
    self._tombstones[s.session_id] = (s.client_key, self._clock())
    while len(self._tombstones) > self._max_tombstones:
      self._tombstones.popitem(last=False)

  def _expire_tombstones(self) -> None:
    horizon = self._clock() - self._tombstone_ttl_s
    while self._tombstones:
      _, evicted_s = next(iter(self._tombstones.values()))
      if evicted_s > horizon:
        break
      self._tombstones.popitem(last=False)
