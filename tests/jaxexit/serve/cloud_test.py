"""The CE-CoLLM cloud service at the RPC level: authentication, session
ownership, weights and split checks, malformed frames (with a good session
running beside them), evicted vs unknown sessions, the CLI's refusals."""

import secrets
import threading

import grpc
import numpy as np
import pytest

from jaxexit.serve import auth, cloud, protocol, wire
from tests.jaxexit.serve import serve_helpers as sh

MAX_MESSAGE = 32 * 1024
D = 32
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def server():
  handle = sh.start(max_message_bytes=MAX_MESSAGE)
  yield handle
  handle.stop(0)


def _call(target, method, request, token=sh.ALICE):
  """The reply header; raises grpc.RpcError."""
  with grpc.insecure_channel(target) as channel:
    path = protocol.method_path(method)
    if method == "Upload":
      fn = channel.stream_unary(path)
      request = iter(request if isinstance(request, list) else [request])
    else:
      fn = channel.unary_unary(path)
    reply = fn(request, timeout=10, metadata=auth.call_metadata(token))
  return protocol.decode(reply)[0]


def _refused(target, method, request, token=sh.ALICE):
  """(code, details) of a call that must fail."""
  with pytest.raises(grpc.RpcError) as e:
    _call(target, method, request, token)
  return e.value.code(), e.value.details()


def _open(target, token=sh.ALICE, mode="split"):
  _, digest = sh.tiny()
  header = dict(model_hash=digest, mode=mode, split_layer=sh.K)
  return _call(target, "Open", protocol.encode(header), token)["session_id"]


def _frame(sid, body=b"", **fields):
  _, digest = sh.tiny()
  return protocol.encode(
    dict(session_id=sid, model_hash=digest, **fields), body
  )


def _states(n, d=D, mode="fp32", seed=0):
  x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
  return wire.to_bytes(wire.quantize(x, mode))


def test_every_method_refuses_missing_or_wrong_tokens(server):
  frame = _frame("x" * 32, _states(1), start=0, expect=1)
  for method in protocol.METHODS:
    for token in (None, "not-a-known-token-000000", sh.ALICE[:-1] + "b"):
      code, details = _refused(server.target, method, frame, token)
      assert code == grpc.StatusCode.UNAUTHENTICATED, method
      assert details.startswith("unauthenticated:")


def test_a_client_cannot_touch_another_clients_session(server):
  sid = _open(server.target)
  _call(server.target, "Upload", _frame(sid, _states(3), start=0))
  made_up = secrets.token_urlsafe(24)
  for method, body, fields in [
    ("Infer", b"", dict(expect=3)),
    ("Infer", _states(1), dict(expect=4, start=3)),
    ("Upload", _states(1), dict(start=3)),
    ("Close", b"", {}),
  ]:
    got = [
      _refused(server.target, method, _frame(s, body, **fields), sh.BOB)
      for s in (sid, made_up)
    ]
    # Bob's view of alice's session is that of a made-up id.
    assert got[0] == got[1], method
    assert got[0][0] == grpc.StatusCode.NOT_FOUND
    assert got[0][1].startswith("unknown_session:")
  # Alice's session is intact: 3 positions, none run yet.
  reply = _call(server.target, "Infer", _frame(sid, expect=3))
  assert reply["processed"] == 3 and 0 <= reply["token"] < 128


def test_weights_hash_and_split_layer_are_checked(server):
  _, digest = sh.tiny()
  for header in [
    dict(model_hash="0" * 64, mode="split", split_layer=sh.K),
    dict(model_hash=digest, mode="split", split_layer=sh.K + 1),
  ]:
    code, details = _refused(server.target, "Open", protocol.encode(header))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert details.startswith("model_mismatch:")
  sid = _open(server.target)
  frame = protocol.encode(
    dict(session_id=sid, model_hash="1" * 64, start=0), _states(1)
  )
  code, details = _refused(server.target, "Upload", frame)
  assert code == grpc.StatusCode.FAILED_PRECONDITION
  code, _ = _refused(
    server.target, "Generate", _frame(sid, b"\0" * 4, start=0, expect=1)
  )
  assert code == grpc.StatusCode.FAILED_PRECONDITION  # wrong_mode


def _malformed(target, sid, full_sid):
  """(method, request, reason) triples that must be refused."""
  bad_magic = b"XXXX" + _states(1)[4:]
  short = _states(2)[:-4]  # fp32 header, body a float short
  nan = wire.to_bytes(
    wire.Payload("fp32", np.full((1, D), np.nan, "<f4"), None)
  )
  return [
    ("Open", b"garbage bytes", "invalid_argument"),
    ("Infer", b"\x00" * 64, "invalid_argument"),
    ("Close", protocol.encode({"session_id": 7}), "invalid_argument"),
    ("Upload", [b"CEF1\xff\xff\xff\xff"], "invalid_argument"),
    ("Upload", _frame(sid, _states(1, d=16), start=3), "invalid_argument"),
    ("Upload", _frame(sid, bad_magic, start=3), "invalid_argument"),
    ("Upload", _frame(sid, short, start=3), "invalid_argument"),
    ("Upload", _frame(sid, nan, start=3), "invalid_argument"),
    ("Upload", _frame(sid, _states(1), start=True), "invalid_argument"),
    ("Upload", _frame(sid, _states(1), start=5), "out_of_order"),
    ("Upload", _frame(sid, _states(1), start=1), "out_of_order"),
    ("Upload", [_frame(sid, _states(1), start=3)] * 2, "out_of_order"),
    ("Upload", _frame(sid, _states(1), start=sh.MAX_LEN), "invalid_argument"),
    ("Infer", _frame(sid, expect=9), "out_of_order"),
    ("Infer", _frame(sid, _states(1), expect=4), "invalid_argument"),
    ("Generate", _frame(full_sid, b"\0\0\0", start=0, expect=1), "invalid"),
    ("Generate", _frame(full_sid, b"\xff" * 4, start=0, expect=1), "invalid"),
    ("Upload", _frame(sid, b"\0" * MAX_MESSAGE, start=3), "oversized"),
    ("Infer", _frame(sid, b"\0" * MAX_MESSAGE, expect=1), "oversized"),
  ]


def test_malformed_frames_are_refused_beside_a_good_session(server):
  sid, full_sid = _open(server.target), _open(server.target, mode="full")
  _call(server.target, "Upload", _frame(sid, _states(3), start=0))
  result = {}
  good = threading.Thread(
    target=lambda: result.update(
      a=sh.client(server.target, token=sh.BOB).generate(sh.PROMPT, sh.N_NEW)
    )
  )
  good.start()
  rounds = 0
  while good.is_alive() or rounds < 1:
    for method, request, reason in _malformed(server.target, sid, full_sid):
      code, details = _refused(server.target, method, request)
      assert code == INVALID, (method, reason, details)
      assert details.startswith(reason), (method, details)
    rounds += 1
  good.join()
  assert result["a"].tokens == sh.full_reference()
  assert result["a"].fallback is None
  # Refused calls changed nothing: alice's session still holds 3 positions.
  assert _call(server.target, "Infer", _frame(sid, expect=3))["processed"] == 3
  # Past gRPC's own limit (twice the maximum) the transport refuses.
  huge = _frame(sid, b"\0" * (5 * MAX_MESSAGE), start=3)
  code, _ = _refused(server.target, "Upload", huge)
  assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_evicted_and_unknown_sessions_get_distinct_statuses():
  probe = sh.start()
  one = probe.service.executor.cache_nbytes["split"]
  probe.stop(0)
  handle = sh.start(budget_bytes=int(one * 1.6), max_session_bytes=one * 2)
  try:
    sid = _open(handle.target)
    _open(handle.target, sh.BOB)  # Evicts alice's session (LRU).
    frame = _frame(sid, _states(1), start=0, expect=1)
    code, details = _refused(handle.target, "Infer", frame)
    assert code == grpc.StatusCode.NOT_FOUND
    assert details.startswith("session_evicted:")
    made_up = _frame(secrets.token_urlsafe(24), _states(1), start=0, expect=1)
    assert _refused(handle.target, "Infer", made_up)[1].startswith(
      "unknown_session:"
    )
    # Bob cannot learn that alice's evicted id existed.
    code, details = _refused(handle.target, "Infer", frame, sh.BOB)
    assert details.startswith("unknown_session:")
    stats = handle.service.store.stats()
    assert stats.total_bytes <= stats.budget_bytes and stats.evictions == 1
  finally:
    handle.stop(0)


@pytest.mark.parametrize(
  "flags, message",
  [
    ([], "without credentials"),
    (["--token", "a=" + "x" * 20], "without credentials"),
    (["--tls-cert", "c.pem"], "both --tls-cert and --tls-key"),
    (["--insecure-local", "--host", "0.0.0.0"], "loopback only"),
    (["--insecure-local", "--token", "a=short"], "at least 16"),
  ],
)
def test_cli_refuses_to_start(flags, message, capsys):
  argv = ["--port", "0", "--model", "tiny", "--split-layer", "2", *flags]
  assert cloud.main(argv) == 2
  assert message in capsys.readouterr().err


def test_cli_refuses_a_bad_split_layer(capsys):
  argv = ["--port", "0", "--model", "tiny", "--split-layer", "4"]
  assert cloud.main([*argv, "--insecure-local"]) == 2
  assert "split layer k=4" in capsys.readouterr().err
