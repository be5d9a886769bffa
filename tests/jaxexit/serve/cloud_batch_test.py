"""Batched catch-ups across sessions: `CloudExecutor.catch_up_many` equals
each session's own `catch_up` (Llama and Mamba), the batcher gathers
coinciding requests and fails a batch's callers alone, and a batching
server serves concurrent clients the tokens they get alone."""

import threading
import time

import jax
import numpy as np
import pytest

from jaxexit.serve import cloud_batch, cloud_exec, load
from tests.jaxexit.serve import serve_helpers as sh
from tests.jaxexit.serve.split_test import _model
from tests.tiers import fast_only, slow

K, MAX_LEN, BUCKETS = 2, 32, (1, 2, 4)


def _executor(family, max_batch=4):
  return cloud_exec.CloudExecutor(
    _model(family), K, max_len=MAX_LEN, buckets=BUCKETS, max_batch=max_batch
  )


def _states(n, seed):
  d = _model("llama").d_model
  return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def _copy(tree):
  return None if tree is None else jax.tree.map(np.array, tree)


@pytest.mark.parametrize("family", fast_only(["llama", "mamba"], "llama"))
def test_catch_up_many_equals_each_sessions_own_catch_up(family):
  """Three sessions at different depths (one fresh), 1, 3 and 6 pending
  positions: same token, probability and caches as one by one."""
  ex = _executor(family)
  first = [ex.catch_up(None, _states(n, i), 0) for i, n in enumerate((4, 2))]
  requests = [
    cloud_exec.CatchUp(first[0].caches, _states(1, 10), 4),
    cloud_exec.CatchUp(first[1].caches, _states(3, 11), 2),
    cloud_exec.CatchUp(None, _states(6, 12), 0),
  ]
  kept = [r._replace(caches=_copy(r.caches)) for r in requests]
  together = ex.catch_up_many(requests)
  for r, got in zip(kept, together):
    alone = ex.catch_up(jax.tree.map(np.array, r.caches), r.hidden, r.start)
    assert got.token == alone.token and got.ran == alone.ran
    np.testing.assert_allclose(got.prob, alone.prob, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(got.caches), jax.tree.leaves(alone.caches)):
      assert a.shape == b.shape
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_catch_up_many_refuses_more_than_max_batch():
  ex = _executor("llama", max_batch=2)
  req = cloud_exec.CatchUp(None, _states(1, 0), 0)
  with pytest.raises(ValueError, match="max_batch=2"):
    ex.catch_up_many([req] * 3)


def test_batcher_gathers_coinciding_requests():
  seen = []

  def run_many(requests):
    seen.append(len(requests))
    return [cloud_exec.StepResult(r.start, 1.0, None, 1) for r in requests]

  batcher = cloud_batch.CatchUpBatcher(run_many, max_batch=4, window_s=0.5)
  start, out = threading.Barrier(4), {}

  def call(i):
    start.wait()
    out[i] = batcher(cloud_exec.CatchUp(None, None, i)).token

  threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  batcher.close()
  assert out == {i: i for i in range(4)}  # Each caller gets its own.
  assert max(seen) > 1 and sum(seen) == 4
  assert batcher.batch_sizes == {n: seen.count(n) for n in set(seen)}


def test_a_lone_request_does_not_wait_for_company():
  run_many = lambda rs: [cloud_exec.StepResult(0, 1.0, None, 1) for _ in rs]
  batcher = cloud_batch.CatchUpBatcher(
    run_many, max_batch=4, window_s=5.0, expected=lambda: 1
  )
  t0 = time.monotonic()
  batcher(cloud_exec.CatchUp(None, None, 0))
  assert time.monotonic() - t0 < 2.0  # Not the 5 s window.
  batcher.close()
  assert batcher.batch_sizes == {1: 1}


def test_a_failing_batch_fails_its_callers_only():
  calls = []

  def run_many(requests):
    calls.append(len(requests))
    if len(calls) == 1:
      raise RuntimeError("device lost")
    return [cloud_exec.StepResult(7, 1.0, None, 1) for _ in requests]

  batcher = cloud_batch.CatchUpBatcher(run_many, max_batch=2, window_s=0.0)
  with pytest.raises(RuntimeError, match="device lost"):
    batcher(cloud_exec.CatchUp(None, None, 0))
  assert batcher(cloud_exec.CatchUp(None, None, 0)).token == 7
  batcher.close()
  with pytest.raises(RuntimeError, match="closed"):
    batcher(cloud_exec.CatchUp(None, None, 0))


def test_a_broken_batcher_fails_its_callers_instead_of_hanging():
  batcher = cloud_batch.CatchUpBatcher(
    lambda rs: [], max_batch=2, window_s=0.1, expected=lambda: 1 / 0
  )
  with pytest.raises(ZeroDivisionError):
    batcher(cloud_exec.CatchUp(None, None, 0))
  with pytest.raises(RuntimeError, match="closed"):
    batcher(cloud_exec.CatchUp(None, None, 0))


def test_bad_batcher_settings_are_named():
  with pytest.raises(ValueError, match="max_batch"):
    cloud_batch.CatchUpBatcher(lambda r: r, max_batch=1, window_s=0.0)
  with pytest.raises(ValueError, match="window_s"):
    cloud_batch.CatchUpBatcher(lambda r: r, max_batch=2, window_s=-1.0)


@slow
def test_batching_server_serves_each_client_its_own_tokens():
  """Four concurrent clients (θ = 1: every token a catch-up) against a
  server batching up to 4 sessions: every answer equals the client's run
  alone, and some catch-ups did run together."""
  server = sh.start(max_batch=4, batch_window_ms=20.0)
  clients = [
    sh.client(server.target, token=list(sh.TOKENS)[i % 2]) for i in range(4)
  ]
  prompts = [list(range(3 + i, 9 + 2 * i)) for i in range(4)]
  try:
    rep = load.run_load(
      clients, prompts, 6, store_stats=server.service.store.stats
    )
  finally:
    for c in clients:
      c.link.close()
    server.stop(None)
  assert rep.mismatched == 0 and rep.fallbacks == 0
  sizes = server.service.batcher.batch_sizes
  assert max(sizes) > 1, sizes
