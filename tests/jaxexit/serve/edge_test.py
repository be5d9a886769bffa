"""The CE-CoLLM edge client against an in-process cloud server: degenerate
θ equal the full / edge-only decoders, a mixed θ equals the reference of
the same decisions, transport modes, eviction re-upload, a stalled cloud's
fall-back, graceful drain."""

import threading
import time

import numpy as np
import pytest

from jaxexit.serve import edge, protocol
from tests.jaxexit.serve import serve_helpers as sh


@pytest.fixture(scope="module")
def server():
  handle = sh.start()
  yield handle
  handle.stop(0)


def _gen(client, prompt=sh.PROMPT, n=sh.N_NEW):
  return client.generate(prompt, n)


def test_never_exit_equals_full_model(server):
  ans = _gen(sh.client(server.target, "collaborative", theta=1.0))
  assert ans.tokens == sh.full_reference()
  assert [s.source for s in ans.stats] == ["cloud"] * sh.N_NEW
  assert ans.fallback is None and ans.reuploads == 0
  assert all(s.bytes_sent > 0 and s.wall_s > 0 for s in ans.stats)


def test_never_exit_equals_generate_full(server):
  """The trusted decoder itself (prefill + scan over the full model)."""
  from jaxexit.decoding.full import generate_full

  model, _ = sh.tiny()
  ref = generate_full(
    model, sh.PROMPT[None], np.array([len(sh.PROMPT)]), max_new_tokens=12
  )
  ans = _gen(sh.client(server.target, theta=1.0), n=12)
  assert ans.tokens == np.asarray(ref)[0].tolist()


def test_cloud_only_equals_full_model(server):
  ans = _gen(sh.client(server.target, "cloud_only"))
  assert ans.tokens == sh.full_reference()
  assert {s.source for s in ans.stats} == {"cloud"}


def test_theta_zero_equals_standalone(server):
  alone = _gen(sh.client(server.target, "standalone"))
  assert alone.tokens == sh.edge_reference()
  assert all(s.bytes_sent == 0 for s in alone.stats)
  collab = _gen(sh.client(server.target, "collaborative", theta=0.0))
  assert collab.tokens == alone.tokens
  assert {s.source for s in collab.stats} == {"edge"}


def test_latency_aware_theta_is_the_expected_cost_rule():
  assert edge.latency_aware_theta(0.9, 0.1, 1.0) == pytest.approx(0.9)
  assert edge.latency_aware_theta(1.0, 0.1, 1.0) == pytest.approx(0.9)
  assert edge.latency_aware_theta(1.0, 0.02, 1.0) == pytest.approx(0.98)
  assert edge.latency_aware_theta(1.0, 3.0, 1.0) == 0.0  # Floored at 0.
  with pytest.raises(ValueError, match="error_cost_s"):
    edge.latency_aware_theta(1.0, 0.1, 0.0)
  with pytest.raises(ValueError, match="error_cost_s"):
    edge.EdgeConfig(error_cost_s=-1.0)


def test_latency_aware_exits_follow_the_measured_request_time(server):
  """A request time far above c drives the threshold to 0 (the edge
  answers alone after the session is open); far below it keeps θ = 1
  (the full model's answer). The stats record the threshold used."""
  cheap = _gen(sh.client(server.target, theta=1.0, error_cost_s=1e-9))
  assert cheap.tokens == sh.edge_reference()
  assert {s.source for s in cheap.stats} == {"edge"}
  assert {s.theta for s in cheap.stats} == {0.0}
  client = sh.client(server.target, theta=1.0, error_cost_s=1e9)
  dear = _gen(client)
  assert dear.tokens == sh.full_reference()
  assert client.link.round_trip_s > 0
  assert all(0.99 < s.theta < 1.0 for s in dear.stats)


def _mixed_theta():
  """A θ between the exit probabilities that splits the steps, at least
  1e-5 from every probability met on the way (no near-tie decision)."""
  _, probs = sh.reference(sh.PROMPT, sh.N_NEW, lambda s, p: False)
  for theta in np.sort(probs)[1:-1]:
    theta = float(theta) - 2e-5
    toks, met = sh.reference(sh.PROMPT, sh.N_NEW, lambda s, p: p >= theta)
    used = (met >= theta).sum()
    if np.abs(met - theta).min() > 1e-5 and 2 <= used <= sh.N_NEW - 2:
      return theta, toks
  pytest.fail(f"no usable θ among exit probabilities {probs}")


def test_mixed_theta_equals_reference_of_same_decisions(server):
  """Edge-exited positions reach the cloud through the async uploader; the
  catch-up over them must be exact."""
  theta, ref = _mixed_theta()
  ans = _gen(sh.client(server.target, theta=theta))
  assert ans.tokens == ref
  sources = [s.source for s in ans.stats]
  assert "edge" in sources and "cloud" in sources


@pytest.mark.parametrize("quant", ["fp16", "int8"])
def test_quantised_transport_sends_fewer_bytes(server, quant):
  exact = _gen(sh.client(server.target, quant="fp32"))
  ans = _gen(sh.client(server.target, quant=quant))
  sent = lambda a: sum(s.bytes_sent for s in a.stats)
  assert sent(ans) < sent(exact)
  # The random tiny model's top logits lie ~1e-3 apart: int8's error
  # (~3e-3, split_test) flips some greedy choices, fp16's (~1e-4) none.
  agree = np.mean(np.array(ans.tokens) == np.array(exact.tokens))
  assert agree >= (1.0 if quant == "fp16" else 0.5), (ans.tokens, exact)


def test_evicted_session_is_reopened_and_context_reuploaded():
  # A budget for one session at a time: bob's session evicts alice's.
  probe = sh.start()
  one = probe.service.executor.cache_nbytes["split"]
  probe.stop(0)
  handle = sh.start(budget_bytes=int(one * 1.6), max_session_bytes=one * 2)
  try:
    client = sh.client(handle.target)
    infer, calls = client.link.infer, []

    def infer_after_eviction(*args, **kw):
      calls.append(1)
      if len(calls) == 3:  # Bob opens a session: alice's is evicted.
        sh.link(handle.target, token=sh.BOB).open("split")
      return infer(*args, **kw)

    client.link.infer = infer_after_eviction
    ans = _gen(client)
    assert ans.tokens == sh.full_reference()
    assert ans.reuploads == 1 and ans.fallback is None
    assert handle.service.store.stats().evictions >= 1
  finally:
    handle.stop(0)


def test_stalled_cloud_falls_back_and_keeps_text(server):
  """Step 2's request finds the cloud stalled (its executor lock held) past
  the 0.5 s deadline: the rest of the answer is the edge's."""
  client = sh.client(server.target, deadline_s=0.5)
  infer, calls = client.link.infer, []

  def stalled(*args, **kw):
    calls.append(1)
    if len(calls) != 3:
      return infer(*args, **kw)
    with server.service.executor.lock:
      return infer(*args, **kw)

  client.link.infer = stalled
  ans = _gen(client)
  ref, _ = sh.reference(sh.PROMPT, sh.N_NEW, lambda s, p: s >= 2)
  assert ans.tokens == ref
  assert ans.fallback_at == 2 and "DEADLINE_EXCEEDED" in ans.fallback
  assert [s.source for s in ans.stats] == ["cloud"] * 2 + ["edge"] * 8


def test_wrong_token_or_weights_raise(server):
  with pytest.raises(protocol.ProtocolError, match="unauthenticated"):
    _gen(sh.client(server.target, token="x" * 30))
  with pytest.raises(protocol.ProtocolError, match="model_mismatch"):
    _gen(sh.client(server.target, model_hash="0" * 64))


def test_config_and_input_checks():
  with pytest.raises(ValueError, match="theta"):
    edge.EdgeConfig(theta=1.5)
  with pytest.raises(ValueError, match="mode"):
    edge.EdgeConfig(mode="both")
  with pytest.raises(ValueError, match="needs a CloudLink"):
    model, _ = sh.tiny()
    edge.EdgeClient(model, sh.K, config=edge.EdgeConfig())
  alone = sh.client(None, "standalone")
  with pytest.raises(ValueError, match="max_len"):
    alone.generate(sh.PROMPT, sh.MAX_LEN)


def test_stop_drains_the_call_in_flight():
  handle = sh.start()
  client = sh.client(handle.target)
  infer, result = client.link.infer, {}

  def slow_then_stop(*args, **kw):
    if result:
      return infer(*args, **kw)
    # Hold the cloud executor, start its stop, then let the call finish.
    stopper = threading.Thread(target=handle.stop, args=(10.0,))
    with handle.service.executor.lock:
      caller = threading.Thread(
        target=lambda: result.update(r=infer(*args, **kw))
      )
      caller.start()
      time.sleep(0.3)
      stopper.start()
      time.sleep(0.3)
    caller.join()
    stopper.join()
    return result["r"]

  client.link.infer = slow_then_stop
  ans = client.generate(sh.PROMPT, 3)
  # The drained call answered; the next found the server gone.
  assert ans.stats[0].source == "cloud" and ans.fallback_at == 1
  assert "UNAVAILABLE" in ans.fallback
  assert ans.tokens == sh.reference(sh.PROMPT, 3, lambda s, p: s >= 1)[0]


def test_restarted_cloud_gets_the_context_again():
  """The cloud restarts (same port, sessions forgotten) between two
  requests: the edge's session is unknown there, so it opens a new one,
  re-uploads the whole context and the answer stays exact."""
  handles = [sh.start()]
  client = sh.client(handles[0].target)
  infer, calls = client.link.infer, []

  def restart_before_third(*args, **kw):
    calls.append(1)
    if len(calls) == 3:
      handles[-1].stop(0)
      handles.append(sh.start(port=handles[0].port))
    return infer(*args, **kw)

  client.link.infer = restart_before_third
  try:
    ans = _gen(client)
  finally:
    handles[-1].stop(0)
  assert ans.tokens == sh.full_reference()
  assert ans.reuploads == 1 and ans.fallback is None
  assert handles[-1].service.counters["Open"] == 1
