"""The CE-CoLLM cloud service's RPC protocol: method names, frames, errors.

CE-CoLLM (Jin & Wu, arXiv 2411.02829; spec `docs/papers/llm_exits.md`
§4.2) has two calls between edge and cloud, context upload and inference
request; `jaxexit.serve.cloud_service` adds session open/close and the
cloud-only baseline. gRPC carries raw bytes (no protobuf codegen): every
request and response is one **frame**

  magic b"CEF1" | header length n (u32, little-endian) | n bytes of a
  UTF-8 JSON object (the header) | body (the rest, possibly empty)

The body is a `jaxexit.serve.wire` payload of layer-k hidden states
[R, D] (Upload, Infer) or R little-endian int32 token ids (Generate).
Methods, all under service `jaxexit.ce_collm.Cloud`:

* `Open` (unary): {model_hash, mode: "split"|"full", split_layer} →
  {session_id, model_hash, split_layer, d_model, vocab_size, max_len,
  max_message_bytes}.
* `Upload` (client streaming): frames {session_id, model_hash, start} +
  payload [R, D] for consecutive positions → {uploaded}.
* `Infer` (unary): {session_id, model_hash, expect[, start]} + optional
  payload (the not-yet-sent positions) → {token, prob, processed}.
* `Generate` (unary, cloud-only baseline): {session_id, model_hash,
  start, expect} + int32 token ids → {token, prob, processed}.
* `Close` (unary): {session_id} → {}.

The client authenticates with gRPC metadata `authorization: Bearer
<token>`. Errors are gRPC status codes whose details start with a reason
word (`REASONS`) and a colon, e.g. NOT_FOUND "session_evicted: ...", so
an edge can tell an evicted session (re-upload) from an unknown one.

Axes: R positions in a payload, D width.
"""

import json
import struct
from typing import Any

import grpc

SERVICE = "jaxexit.ce_collm.Cloud"
METHODS = ("Open", "Upload", "Infer", "Generate", "Close")
AUTH_KEY = "authorization"
AUTH_SCHEME = "Bearer "
MODES = ("split", "full")

MAGIC = b"CEF1"
_PREFIX = struct.Struct("<4sI")
MAX_HEADER_BYTES = 16 * 1024

# Reason word -> gRPC code. The reason starts every error's details.
REASONS = {
  "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
  "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
  "oversized": grpc.StatusCode.INVALID_ARGUMENT,
  "out_of_order": grpc.StatusCode.INVALID_ARGUMENT,
  "invalid_request": grpc.StatusCode.INVALID_ARGUMENT,
  "unknown_session": grpc.StatusCode.NOT_FOUND,
  "session_evicted": grpc.StatusCode.NOT_FOUND,
  "model_mismatch": grpc.StatusCode.FAILED_PRECONDITION,
  "wrong_mode": grpc.StatusCode.FAILED_PRECONDITION,
  "session_too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
  "budget_exceeded": grpc.StatusCode.RESOURCE_EXHAUSTED,
  "internal": grpc.StatusCode.INTERNAL,
}


class ProtocolError(Exception):
  """A refused call: `reason` (a key of `REASONS`) and a message.

  Raised inside the server's handlers and turned into a gRPC status;
  raised by the client (`jaxexit.serve.edge_link`) from a received one,
  with `code` the received status (possibly one `REASONS` lacks, such as
  UNAVAILABLE or DEADLINE_EXCEEDED, with reason "transport").
  """

  def __init__(self, reason: str, message: str, code=None):
    super().__init__(f"{reason}: {message}")
    self.reason = reason
    self.message = message
    self.code = REASONS.get(reason) if code is None else code


def method_path(name: str) -> str:
  """The gRPC path of a method, e.g. "/jaxexit.ce_collm.Cloud/Infer"."""
  if name not in METHODS:
    raise ValueError(f"unknown method {name!r}; expected one of {METHODS}")
  return f"/{SERVICE}/{name}"


def encode(header: dict[str, Any], body: bytes = b"") -> bytes:
  """One frame: prefix, JSON header, body."""
  head = json.dumps(header, separators=(",", ":")).encode()
  if len(head) > MAX_HEADER_BYTES:
    raise ValueError(f"header of {len(head)} bytes > {MAX_HEADER_BYTES}")
  return _PREFIX.pack(MAGIC, len(head)) + head + bytes(body)


def decode(frame: bytes) -> tuple[dict[str, Any], bytes]:
  """Parses a frame into (header, body).

  Raises:
    ProtocolError("invalid_argument"): truncated frame, bad magic, a
      header that is not a JSON object or longer than `MAX_HEADER_BYTES`.
  """
  if not isinstance(frame, (bytes, bytearray, memoryview)):
    raise ProtocolError("invalid_argument", "a frame must be bytes")
  frame = bytes(frame)
  if len(frame) < _PREFIX.size:
    raise ProtocolError(
      "invalid_argument", f"frame of {len(frame)} bytes has no prefix"
    )
  magic, n = _PREFIX.unpack_from(frame)
  if magic != MAGIC:
    raise ProtocolError(
      "invalid_argument", f"bad frame magic {magic!r}; expected {MAGIC!r}"
    )
  if n > MAX_HEADER_BYTES or _PREFIX.size + n > len(frame):
    raise ProtocolError(
      "invalid_argument",
      f"header length {n} exceeds the frame ({len(frame)} bytes) or "
      f"the {MAX_HEADER_BYTES}-byte maximum",
    )
  try:
    header = json.loads(frame[_PREFIX.size : _PREFIX.size + n].decode())
  except (UnicodeDecodeError, ValueError) as e:
    raise ProtocolError("invalid_argument", f"header is not JSON: {e}")
  if not isinstance(header, dict):
    raise ProtocolError("invalid_argument", "the header must be an object")
  return header, frame[_PREFIX.size + n :]


def field(header: dict[str, Any], name: str, kind: type, *, minimum=None):
  """header[name], checked to be `kind` (bool is not an int) ≥ minimum.

  Raises:
    ProtocolError("invalid_argument"): missing, wrong type or too small.
  """
  value = header.get(name)
  ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
  if ok and minimum is not None and value < minimum:
    ok = False
  if not ok or (kind is str and not value):
    want = kind.__name__ + ("" if minimum is None else f" >= {minimum}")
    raise ProtocolError(
      "invalid_argument",
      f"header field {name!r} must be a {want}; got {value!r}",
    )
  return value


def details(reason: str, message: str) -> str:
  """A status's details string: "<reason>: <message>"."""
  return f"{reason}: {message}"


def from_rpc_error(e: grpc.RpcError) -> ProtocolError:
  """The `ProtocolError` of a failed call (reason "transport" for codes
  that no server handler sends, e.g. UNAVAILABLE, DEADLINE_EXCEEDED)."""
  code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
  text = (e.details() if hasattr(e, "details") else None) or str(code)
  reason, sep, message = text.partition(": ")
  if not sep or reason not in REASONS or REASONS[reason] != code:
    reason, message = "transport", text
  return ProtocolError(reason, message, code)
