"""Frames of the CE-CoLLM RPCs: round trip, every malformed case refused
with invalid_argument, header fields typed, statuses parsed back."""

import grpc
import pytest

from jaxexit.serve import protocol


def test_round_trip():
  frame = protocol.encode({"a": 1, "b": "x"}, b"\x00\x01body")
  assert frame[:4] == protocol.MAGIC
  assert protocol.decode(frame) == ({"a": 1, "b": "x"}, b"\x00\x01body")
  assert protocol.decode(protocol.encode({})) == ({}, b"")


@pytest.mark.parametrize(
  "frame",
  [
    b"",
    b"CEF",
    b"XXXX\x00\x00\x00\x00",
    b"CEF1\x10\x00\x00\x00{}",  # header longer than the frame
    b"CEF1\xff\xff\xff\xff{}",
    b"CEF1\x02\x00\x00\x00[]",  # not an object
    b"CEF1\x02\x00\x00\x00\xff\xfe",  # not UTF-8
    b"CEF1\x03\x00\x00\x00{x}",  # not JSON
  ],
)
def test_malformed_frames_are_invalid_argument(frame):
  with pytest.raises(protocol.ProtocolError) as e:
    protocol.decode(frame)
  assert e.value.reason == "invalid_argument"
  assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_oversized_header_is_refused_both_ways():
  with pytest.raises(ValueError, match="header of"):
    protocol.encode({"x": "y" * protocol.MAX_HEADER_BYTES})


def test_fields_are_typed():
  h = {"n": 3, "flag": True, "s": "id", "empty": "", "neg": -1}
  assert protocol.field(h, "n", int, minimum=0) == 3
  assert protocol.field(h, "s", str) == "id"
  for name, kind in [("flag", int), ("empty", str), ("neg", int), ("no", str)]:
    with pytest.raises(protocol.ProtocolError, match=repr(name)):
      protocol.field(h, name, kind, minimum=0 if kind is int else None)


def test_every_reason_names_a_code_and_methods_have_paths():
  assert all(isinstance(c, grpc.StatusCode) for c in protocol.REASONS.values())
  assert protocol.method_path("Infer") == "/jaxexit.ce_collm.Cloud/Infer"
  with pytest.raises(ValueError):
    protocol.method_path("Delete")


class _Err(grpc.RpcError):
  def __init__(self, code, details):
    self._code, self._details = code, details

  def code(self):
    return self._code

  def details(self):
    return self._details


def test_statuses_parse_back():
  nf = grpc.StatusCode.NOT_FOUND
  e = protocol.from_rpc_error(_Err(nf, "session_evicted: gone"))
  assert (e.reason, e.message, e.code) == ("session_evicted", "gone", nf)
  # A reason word under a code that does not carry it is not trusted.
  e = protocol.from_rpc_error(_Err(grpc.StatusCode.UNAVAILABLE, "oversized: x"))
  assert e.reason == "transport" and e.code == grpc.StatusCode.UNAVAILABLE
  e = protocol.from_rpc_error(_Err(grpc.StatusCode.DEADLINE_EXCEEDED, None))
  assert e.reason == "transport"
