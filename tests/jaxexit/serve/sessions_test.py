"""Tests of the cloud's per-session context store (CE-CoLLM, §4.2)."""

import base64
import sys
import threading

import pytest

from jaxexit.serve import sessions as S

H = "weights-sha256-aaaa"  # The edge model's hash in every session below.


class FakeClock:
  def __init__(self):
    self.t = 100.0

  def __call__(self) -> float:
    return self.t


def _store(budget=1000, cap=1000, **kw):
  return S.SessionStore(budget, cap, **kw)


def _opened(store, client, nbytes):
  """Opens a session of `client` holding one position of `nbytes` bytes."""
  sid = store.open(client, H)
  store.upload(client, sid, 0, [b"x"], nbytes, model_hash=H)
  return sid


def _bytes(store):
  return store.stats().per_session_bytes


def test_ids_are_unguessable_and_distinct():
  store = _store()
  ids = [store.open("a", H) for _ in range(2000)]
  assert len(set(ids)) == len(ids)
  for sid in ids:
    assert len(sid) == 32  # 24 random bytes, URL-safe base64.
    assert len(base64.urlsafe_b64decode(sid)) == S.ID_BYTES
  # Every base64 symbol turns up, and no two ids share even a 6-char
  # prefix (36 bits): ids are random, not counters or timestamps.
  assert len(set("".join(ids))) == 64
  assert len({sid[:6] for sid in ids}) == len(ids)
  assert _store().open("a", H) not in ids


def test_session_fields_after_uploads():
  store = _store()
  sid = store.open("a", H)
  assert store.upload("a", sid, 0, [b"p0", b"p1"], 8, model_hash=H) == 2
  assert store.upload("a", sid, 2, [b"p2"], 4, model_hash=H) == 3
  s = store.get("a", sid, model_hash=H)
  assert s.session_id == sid and s.model_hash == H
  assert s.states == (b"p0", b"p1", b"p2") and s.states[2] == b"p2"
  assert (s.uploaded, s.processed, s.nbytes) == (3, 0, 12)
  assert s.pending == range(0, 3) and s.cache is None
  # The returned session is a detached copy.
  store.upload("a", sid, 3, [b"p3"], 4, model_hash=H)
  assert s.uploaded == 3
  assert store.get("a", sid, model_hash=H).uploaded == 4


def test_set_cache_accounts_bytes_and_processed():
  store = _store(budget=100, cap=100)
  sid = _opened(store, "a", 10)
  store.upload("a", sid, 1, [b"y"], 10, model_hash=H)
  cache = object()
  store.set_cache("a", sid, cache, 30, processed=1, model_hash=H)
  s = store.get("a", sid, model_hash=H)
  assert s.cache is cache and s.cache_nbytes == 30 and s.nbytes == 50
  assert s.pending == range(1, 2)
  store.set_cache("a", sid, "smaller", 5, processed=2, model_hash=H)
  assert store.stats().total_bytes == 25
  with pytest.raises(S.InvalidRequest, match="processed=3"):
    store.set_cache("a", sid, None, 0, processed=3, model_hash=H)
  assert store.get("a", sid, model_hash=H).cache == "smaller"


def test_lru_eviction_order_under_budget():
  store = _store(budget=30, cap=30)
  a, b, c = (_opened(store, "client", 10) for _ in range(3))
  store.get("client", a, model_hash=H)  # Use order now: b, c, a.
  d = _opened(store, "client", 10)  # 40 > 30: evicts b, least recent.
  assert set(_bytes(store)) == {a, c, d}
  store.upload("client", d, 1, [b"y"], 5, model_hash=H)  # Evicts c.
  assert _bytes(store) == {a: 10, d: 15}
  stats = store.stats()
  assert (stats.evictions, stats.total_bytes, stats.sessions) == (2, 25, 2)
  assert stats.tombstones == 2


def test_eviction_spares_the_session_being_written():
  store = _store(budget=25, cap=25)
  a = _opened(store, "client", 10)
  b = _opened(store, "client", 10)
  # a is the least recently used, but it is the one being written.
  store.upload("client", a, 1, [b"y"], 10, model_hash=H)
  assert _bytes(store) == {a: 20}
  with pytest.raises(S.SessionEvicted):
    store.get("client", b, model_hash=H)


def test_cache_growth_evicts_others_too():
  store = _store(budget=30, cap=30)
  a = _opened(store, "client", 10)
  b = _opened(store, "client", 10)
  store.set_cache("client", b, "kv", 15, processed=1, model_hash=H)
  assert _bytes(store) == {b: 25}
  assert store.stats().evictions == 1 and a not in _bytes(store)


def test_budget_exceeded_evicts_nobody():
  store = _store(budget=20, cap=100)
  a = _opened(store, "client", 10)
  b = _opened(store, "client", 5)
  with pytest.raises(S.BudgetExceeded, match="budget of 20 bytes") as e:
    store.upload("client", b, 1, [b"y"], 16, model_hash=H)
  assert e.value.status == "budget_exceeded"
  assert _bytes(store) == {a: 10, b: 5} and store.stats().evictions == 0


def test_per_session_cap():
  store = _store(budget=1000, cap=15)
  sid = _opened(store, "client", 10)
  with pytest.raises(S.SessionTooLarge, match="cap of 15 bytes") as e:
    store.upload("client", sid, 1, [b"y"], 6, model_hash=H)
  assert e.value.status == "session_too_large"
  with pytest.raises(S.SessionTooLarge):
    store.set_cache("client", sid, "kv", 6, processed=1, model_hash=H)
  s = store.get("client", sid, model_hash=H)
  assert (s.uploaded, s.nbytes, s.cache) == (1, 10, None)  # Unchanged.
  assert store.upload("client", sid, 1, [b"y"], 5, model_hash=H) == 2


@pytest.mark.parametrize("start", [0, 1, 3, 7])
def test_out_of_order_and_overlap_refused(start):
  store = _store()
  sid = store.open("client", H)
  store.upload("client", sid, 0, [b"0", b"1", b"2"], 3, model_hash=H)
  if start == 3:
    assert store.upload("client", sid, 3, [b"3"], 1, model_hash=H) == 4
    return
  with pytest.raises(S.OutOfOrder) as e:
    store.upload("client", sid, start, [b"z"], 1, model_hash=H)
  assert (e.value.expected, e.value.given) == (3, start)
  assert e.value.status == "out_of_order"
  assert f"position {start}" in str(e.value)
  assert "expects position 3" in str(e.value)
  assert ("overlaps" if start < 3 else "gap") in str(e.value)
  s = store.get("client", sid, model_hash=H)
  assert s.states == (b"0", b"1", b"2") and s.nbytes == 3


def test_first_upload_must_start_at_zero():
  store = _store()
  sid = store.open("client", H)
  with pytest.raises(S.OutOfOrder, match="expects position 0"):
    store.upload("client", sid, 1, [b"x"], 1, model_hash=H)


def test_evicted_status_and_tombstones():
  clock = FakeClock()
  store = _store(budget=10, cap=10, clock=clock, tombstone_ttl_s=60.0)
  a = _opened(store, "client", 10)
  _opened(store, "client", 10)  # Evicts a.
  for call in (
    lambda: store.get("client", a, model_hash=H),
    lambda: store.upload("client", a, 1, [b"y"], 1, model_hash=H),
    lambda: store.set_cache("client", a, None, 0, processed=0, model_hash=H),
  ):
    with pytest.raises(S.SessionEvicted, match="re-upload its context") as e:
      call()
    assert e.value.status == "session_evicted"
  clock.t += 59.0
  with pytest.raises(S.SessionEvicted):
    store.get("client", a, model_hash=H)
  clock.t += 1.0  # After the TTL the id is forgotten.
  with pytest.raises(S.UnknownSession):
    store.get("client", a, model_hash=H)
  assert store.stats().tombstones == 0


def test_tombstones_are_bounded_in_number():
  store = _store(budget=10, cap=10, max_tombstones=2)
  ids = [_opened(store, "client", 10) for _ in range(4)]  # 3 evicted.
  assert store.stats().tombstones == 2
  with pytest.raises(S.UnknownSession):  # Oldest tombstone forgotten.
    store.get("client", ids[0], model_hash=H)
  for sid in ids[1:3]:
    with pytest.raises(S.SessionEvicted):
      store.get("client", sid, model_hash=H)


def test_close_frees_and_forgets():
  store = _store(budget=10, cap=10)
  a = _opened(store, "client", 10)
  b = _opened(store, "client", 10)  # Evicts a.
  store.close("client", b)
  assert store.stats().total_bytes == 0 and store.stats().sessions == 0
  store.close("client", a)  # Closing an evicted session drops its tombstone.
  for sid in (a, b):
    with pytest.raises(S.UnknownSession):
      store.get("client", sid, model_hash=H)
    with pytest.raises(S.UnknownSession):
      store.close("client", sid)


def _error(call):
  with pytest.raises(S.SessionError) as e:
    call()
  return type(e.value), e.value.status, str(e.value)


def test_cross_client_isolation():
  store = _store(budget=20, cap=20)
  evicted = _opened(store, "alice", 10)
  live = _opened(store, "alice", 10)
  store.upload("alice", live, 1, [b"y"], 5, model_hash=H)  # Evicts one.
  made_up = S.SessionStore(1, 1).open("alice", H)
  before = store.get("alice", live, model_hash=H)

  def attempts(sid, model_hash):
    return [
      _error(lambda: store.get("bob", sid, model_hash=model_hash)),
      _error(
        lambda: store.upload("bob", sid, 2, [b"z"], 1, model_hash=model_hash)
      ),
      _error(
        lambda: store.set_cache(
          "bob", sid, "kv", 1, processed=0, model_hash=model_hash
        )
      ),
      _error(lambda: store.close("bob", sid)),
    ]

  # Bob gets exactly the same reply for Alice's live session, her evicted
  # one and an id that never existed, with her weights or others.
  replies = {
    e
    for sid in (live, evicted, made_up)
    for m in (H, "other")
    for e in (attempts(sid, m))
  }
  assert replies == {
    (S.UnknownSession, "unknown_session", str(S.UnknownSession()))
  }
  after = store.get("alice", live, model_hash=H)
  assert (after.states, after.nbytes, after.cache) == (
    before.states,
    before.nbytes,
    before.cache,
  )
  # A client id that merely extends Alice's is another client.
  with pytest.raises(S.UnknownSession):
    store.get("alice2", live, model_hash=H)


def test_model_hash_mismatch_refused():
  store = _store()
  sid = _opened(store, "client", 10)
  for call in (
    lambda: store.get("client", sid, model_hash="other"),
    lambda: store.upload("client", sid, 1, [b"y"], 1, model_hash="other"),
    lambda: store.set_cache(
      "client", sid, "kv", 1, processed=0, model_hash="other"
    ),
  ):
    with pytest.raises(S.ModelMismatch, match="other model weights") as e:
      call()
    assert e.value.status == "model_mismatch"
  assert store.get("client", sid, model_hash=H).nbytes == 10


def test_invalid_requests():
  store = _store()
  sid = store.open("client", H)
  with pytest.raises(S.InvalidRequest):
    store.open("", H)
  with pytest.raises(S.InvalidRequest):
    store.open("client", "")
  with pytest.raises(S.InvalidRequest, match="at least one position"):
    store.upload("client", sid, 0, [], 0, model_hash=H)
  with pytest.raises(S.InvalidRequest, match="nbytes"):
    store.upload("client", sid, 0, [b"x"], -1, model_hash=H)
  with pytest.raises(S.InvalidRequest, match="start_position"):
    store.upload("client", sid, -1, [b"x"], 1, model_hash=H)
  with pytest.raises(ValueError):  # InvalidRequest is a ValueError too.
    S.SessionStore(-1, 10)


def test_status_codes_are_distinct():
  classes = [
    S.InvalidRequest,
    S.UnknownSession,
    S.SessionEvicted,
    S.ModelMismatch,
    S.OutOfOrder,
    S.SessionTooLarge,
    S.BudgetExceeded,
  ]
  assert all(issubclass(c, S.SessionError) for c in classes)
  assert len({c.status for c in classes + [S.SessionError]}) == 8


@pytest.fixture
def fast_switching():
  """Makes the interpreter switch threads often, to expose races."""
  old = sys.getswitchinterval()
  sys.setswitchinterval(1e-6)
  yield
  sys.setswitchinterval(old)


def _hammer(n_threads, body):
  errors = []

  def run(i):
    try:
      body(i)
    except Exception as e:  # Reported in the main thread.
      errors.append(e)

  threads = [threading.Thread(target=run, args=(i,)) for i in range(n_threads)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors, errors


def test_threads_uploading_without_eviction(fast_switching):
  store = _store(budget=10**6, cap=10**6)
  n_threads, n_uploads = 4, 300
  sids = [store.open(f"c{i}", H) for i in range(n_threads)]

  def body(i):
    for p in range(n_uploads):
      store.upload(f"c{i}", sids[i], p, [p], 3, model_hash=H)

  _hammer(n_threads, body)
  stats = store.stats()
  assert stats.total_bytes == n_threads * n_uploads * 3
  assert stats.evictions == 0
  for i, sid in enumerate(sids):
    s = store.get(f"c{i}", sid, model_hash=H)
    assert s.states == tuple(range(n_uploads)) and s.nbytes == n_uploads * 3


def test_threads_uploading_under_budget(fast_switching):
  budget = 70
  store = _store(budget=budget, cap=40)
  n_threads, n_uploads = 4, 200
  running, lock, seen = [n_threads], threading.Lock(), []
  # The oldest session: the first session to reach 35 bytes evicts it,
  # however the threads interleave.
  victim = _opened(store, "v", 40)

  def monitor():
    while running[0]:
      stats = store.stats()
      seen.append(stats.total_bytes)
      assert stats.total_bytes == sum(stats.per_session_bytes.values())
      assert stats.total_bytes <= budget

  def upload_and_reopen(client):
    sid, position = store.open(client, H), 0
    for _ in range(n_uploads):
      try:
        position = store.upload(client, sid, position, [b"x"], 7, model_hash=H)
      except (S.SessionEvicted, S.SessionTooLarge):
        store.close(client, sid)
        sid, position = store.open(client, H), 0

  def body(i):
    if i == n_threads:
      return monitor()
    try:
      upload_and_reopen(f"c{i}")
    finally:
      with lock:
        running[0] -= 1

  _hammer(n_threads + 1, body)
  stats = store.stats()
  assert stats.total_bytes == sum(stats.per_session_bytes.values()) <= budget
  assert stats.evictions > 0 and len(seen) > 0
  with pytest.raises(S.SessionEvicted):
    store.get("v", victim, model_hash=H)
  assert stats.sessions <= n_threads
