"""The CE-CoLLM cloud service: gRPC handlers over the context manager.

CE-CoLLM (Jin & Wu, arXiv 2411.02829; spec `docs/papers/llm_exits.md`
§4.2): the edge uploads layer-k states, the cloud stores them per session
(`jaxexit.serve.sessions.SessionStore`, the context manager, with the
session's cloud caches beside them) and on an inference request runs
blocks k..L-1 over every position it has not run yet
(`jaxexit.serve.cloud_exec`). Calls and frames: `jaxexit.serve.protocol`.

Every call authenticates the caller (`jaxexit.serve.auth`); sessions are
the caller's own (another client's session id is as unknown as a made-up
one); a request over `max_message_bytes` or with a malformed frame is
refused with INVALID_ARGUMENT before it touches any session, and an
Upload stream is stored all at once or not at all. Store errors map to
their own reasons (`protocol.REASONS`): an evicted session is NOT_FOUND
"session_evicted: ...", so the edge opens a new one and re-uploads.

Sessions compute concurrently (a call holds only its session's lock
stripe); with `ServerConfig.max_batch` > 1 the catch-ups of sessions
whose requests coincide run as one compiled call
(`jaxexit.serve.cloud_batch`). Cloud-only `Generate` calls run one after
another under `CloudExecutor.lock`.

Axes: R positions of a payload, D width, V vocabulary.
"""

import logging
import threading
from typing import Any, NamedTuple

import grpc
import numpy as np

from jaxexit.serve import cloud_batch, cloud_exec, protocol, sessions, wire

_LOG = logging.getLogger(__name__)
_STRIPES = 64  # Session lock stripes (sessions sharing one run in turn).


class _Context(NamedTuple):
  """What a session's `cache` slot holds: its kind and its caches (None
  until its first call, or after a failed one: rebuilt from the states)."""

  kind: str
  caches: Any


class CloudService:
  """Handlers of the `protocol.METHODS`, one instance per server.

  Args:
    backbone: the full `DecoderBackbone`.
    k: split layer, 1 ≤ k ≤ L - 1.
    model_hash: `models.weights_hash(backbone)`.
    authenticator: maps call metadata to client ids.
    config: limits (`server_config.ServerConfig`).
  """

  def __init__(self, backbone, k, *, model_hash, authenticator, config):
    self.k, self.model_hash, self.config = k, model_hash, config
    max_len = min(config.max_len, getattr(backbone, "max_position", 1 << 30))
    self.executor = cloud_exec.CloudExecutor(
      backbone,
      k,
      max_len=max_len,
      buckets=config.buckets,
      max_batch=config.max_batch,
    )
    self.batcher = None
    if config.max_batch > 1:
      self.batcher = cloud_batch.CatchUpBatcher(
        self.executor.catch_up_many,
        max_batch=config.max_batch,
        window_s=config.batch_window_ms / 1e3,
        expected=lambda: self.counters["infer_in_flight"],
      )
    self.max_len = max_len
    self.store = sessions.SessionStore(
      config.budget_bytes, config.max_session_bytes
    )
    self._auth = authenticator
    self._lock = threading.Lock()  # Guards `counters`.
    # A call's get, run and set_cache hold its session's stripe, so two
    # calls of one session never interleave while other sessions run.
    self._stripes = [threading.Lock() for _ in range(_STRIPES)]
    self.counters = {m: 0 for m in protocol.METHODS}
    self.counters.update(refused=0, positions_run=0, infer_in_flight=0)

  # -- gRPC plumbing -------------------------------------------------------

  def handler(self) -> grpc.GenericRpcHandler:
    """The generic handler (raw bytes in and out) of every method."""
    unary = grpc.unary_unary_rpc_method_handler
    return grpc.method_handlers_generic_handler(
      protocol.SERVICE,
      {
        "Open": unary(self._unary("Open", self._open)),
        "Upload": grpc.stream_unary_rpc_method_handler(self._upload_rpc),
        "Infer": unary(self._unary("Infer", self._infer)),
        "Generate": unary(self._unary("Generate", self._generate)),
        "Close": unary(self._unary("Close", self._close)),
      },
    )

  def _count(self, name: str, n: int = 1) -> None:
    with self._lock:
      self.counters[name] += n

  def _guard(self, context, name: str, run) -> bytes:
    """Authenticates, runs, and turns every failure into a status."""
    try:
      client = self._auth.client_id(context.invocation_metadata())
      reply = protocol.encode(run(client))
      self._count(name)
      return reply
    except protocol.ProtocolError as e:
      err = e
    except sessions.SessionError as e:
      err = protocol.ProtocolError(e.status, str(e))
    except Exception as e:  # A bug: report it without leaking internals.
      _LOG.exception("%s failed", name)
      err = protocol.ProtocolError("internal", type(e).__name__)
    self._count("refused")
    context.abort(err.code, protocol.details(err.reason, err.message))

  def _unary(self, name: str, fn):
    def rpc(request: bytes, context) -> bytes:
      def run(client):
        self._check_size(request)
        return fn(client, *protocol.decode(request))

      return self._guard(context, name, run)

    return rpc

  def _upload_rpc(self, request_iterator, context) -> bytes:
    return self._guard(
      context, "Upload", lambda client: self._upload(client, request_iterator)
    )

  # -- checks --------------------------------------------------------------

  def _check_size(self, frame: bytes) -> None:
    if len(frame) > self.config.max_message_bytes:
      raise protocol.ProtocolError(
        "oversized",
        f"message of {len(frame)} bytes is over the maximum of "
        f"{self.config.max_message_bytes} bytes; send fewer positions",
      )

  def _ids(self, header) -> tuple[str, str]:
    sid = protocol.field(header, "session_id", str)
    return sid, protocol.field(header, "model_hash", str)

  def _session(self, client, sid, model_hash, kind) -> sessions.Session:
    s = self.store.get(client, sid, model_hash=model_hash)
    if s.cache.kind != kind:
      raise protocol.ProtocolError(
        "wrong_mode",
        f"this call needs a {kind!r} session; this one is {s.cache.kind!r}",
      )
    return s

  def _check_room(self, start: int, n: int) -> None:
    if start + n > self.max_len:
      raise protocol.ProtocolError(
        "invalid_argument",
        f"positions [{start}, {start + n}) go beyond the session's "
        f"max_len={self.max_len}",
      )

  def _rows(self, body: bytes) -> tuple[list[wire.Payload], int]:
    """A payload [R, D] split into R one-row payloads, and its body size."""
    try:
      p = wire.from_bytes(body, d=self.executor.d_model)
    except ValueError as e:
      raise protocol.ProtocolError("invalid_argument", f"payload: {e}")
    if p.data.ndim != 2:
      raise protocol.ProtocolError(
        "invalid_argument", f"payload shape {p.data.shape} must be [R, D]"
      )
    if not np.isfinite(wire.dequantize(p)).all():
      raise protocol.ProtocolError("invalid_argument", "non-finite states")
    rows = [
      wire.Payload(
        p.mode,
        p.data[i],
        None if p.scale is None else p.scale[i : i + 1].reshape(()),
      )
      for i in range(p.data.shape[0])
    ]
    n, d = p.data.shape
    return rows, wire.payload_bytes(n, d, p.mode)

  def _tokens(self, body: bytes) -> np.ndarray:
    if not body or len(body) % 4:
      raise protocol.ProtocolError(
        "invalid_argument", f"token body of {len(body)} bytes is not int32s"
      )
    ids = np.frombuffer(body, "<i4").astype(np.int32)
    if ((ids < 0) | (ids >= self.executor.vocab_size)).any():
      raise protocol.ProtocolError(
        "invalid_argument",
        f"token ids must lie in [0, V={self.executor.vocab_size})",
      )
    return ids

  # -- methods -------------------------------------------------------------

  def _open(self, client, header, body) -> dict:
    model_hash = protocol.field(header, "model_hash", str)
    mode = protocol.field(header, "mode", str)
    k = protocol.field(header, "split_layer", int)
    if mode not in protocol.MODES:
      raise protocol.ProtocolError(
        "invalid_argument", f"mode {mode!r} not in {protocol.MODES}"
      )
    if model_hash != self.model_hash:
      raise protocol.ProtocolError(
        "model_mismatch",
        f"edge weights hash {model_hash[:16]}... differ from the cloud's "
        f"{self.model_hash[:16]}...; load the same model on both sides",
      )
    if k != self.k:
      raise protocol.ProtocolError(
        "model_mismatch", f"edge split layer {k} != the cloud's {self.k}"
      )
    sid = self.store.open(client, model_hash)
    try:
      self.store.set_cache(
        client,
        sid,
        _Context(mode, None),
        self.executor.cache_nbytes[mode],
        processed=0,
        model_hash=model_hash,
      )
    except sessions.SessionError:
      self.store.close(client, sid)
      raise
    return dict(
      session_id=sid,
      model_hash=self.model_hash,
      split_layer=self.k,
      d_model=self.executor.d_model,
      vocab_size=self.executor.vocab_size,
      max_len=self.max_len,
      max_message_bytes=self.config.max_message_bytes,
    )

  def _upload(self, client, frames) -> dict:
    sid = model_hash = first = None
    rows, nbytes, total, end = [], 0, 0, 0
    for frame in frames:
      self._check_size(frame)
      total += len(frame)
      if total > self.config.max_session_bytes:
        raise protocol.ProtocolError(
          "oversized", f"upload stream over {total} bytes"
        )
      header, body = protocol.decode(frame)
      ids = self._ids(header)
      start = protocol.field(header, "start", int, minimum=0)
      if sid is None:
        (sid, model_hash), first, end = ids, start, start
      elif ids != (sid, model_hash) or start != end:
        raise protocol.ProtocolError(
          "out_of_order" if ids == (sid, model_hash) else "invalid_argument",
          f"frames of one stream must be one session's consecutive "
          f"positions; frame starts at {start}, expected {end}",
        )
      new, size = self._rows(body)
      rows += new
      nbytes += size
      end += len(new)
    if sid is None:
      raise protocol.ProtocolError("invalid_argument", "empty upload stream")
    self._check_room(first, end - first)
    self._session(client, sid, model_hash, "split")
    uploaded = self.store.upload(
      client, sid, first, rows, nbytes, model_hash=model_hash
    )
    return dict(uploaded=uploaded)

  def _infer(self, client, header, body) -> dict:
    self._count("infer_in_flight")
    try:
      return self._infer_run(client, header, body)
    finally:
      self._count("infer_in_flight", -1)

  def _infer_run(self, client, header, body) -> dict:
    sid, model_hash = self._ids(header)
    expect = protocol.field(header, "expect", int, minimum=1)
    self._session(client, sid, model_hash, "split")
    if body:
      start = protocol.field(header, "start", int, minimum=0)
      rows, nbytes = self._rows(body)
      self._check_room(start, len(rows))
      self.store.upload(client, sid, start, rows, nbytes, model_hash=model_hash)

    def run(s, caches):
      hidden = np.stack([wire.dequantize(r) for r in s.states[s.processed :]])
      request = cloud_exec.CatchUp(caches, hidden, s.processed)
      if self.batcher is None:
        return self.executor.catch_up(*request)
      return self.batcher(request)

    return self._run(client, sid, model_hash, "split", expect, run)

  def _generate(self, client, header, body) -> dict:
    sid, model_hash = self._ids(header)
    expect = protocol.field(header, "expect", int, minimum=1)
    start = protocol.field(header, "start", int, minimum=0)
    ids = self._tokens(body)
    self._check_room(start, ids.shape[0])
    self._session(client, sid, model_hash, "full")
    self.store.upload(
      client, sid, start, ids.tolist(), 4 * ids.shape[0], model_hash=model_hash
    )

    def run(s, caches):
      tokens = np.asarray(s.states[s.processed :], np.int32)
      return self.executor.full_step(caches, tokens, s.processed)

    return self._run(client, sid, model_hash, "full", expect, run)

  def _run(self, client, sid, model_hash, kind, expect, run) -> dict:
    """Runs the session's pending positions and stores its new caches.

    The store's lock is not held while computing; a session's get, run
    and set_cache happen under its lock stripe, so two calls of one
    session never interleave."""
    with self._stripes[hash(sid) % _STRIPES]:
      s = self._session(client, sid, model_hash, kind)
      if s.uploaded != expect:
        raise protocol.ProtocolError(
          "out_of_order",
          f"the session holds {s.uploaded} positions; the request expects "
          f"{expect} (finish the uploads first)",
        )
      if not s.pending:
        raise protocol.ProtocolError(
          "invalid_argument", "every uploaded position was already run"
        )
      try:
        result = run(s, s.cache.caches)
      except Exception:
        # The caches were donated: forget them; the states rebuild them.
        self.store.set_cache(
          client,
          sid,
          _Context(kind, None),
          s.cache_nbytes,
          processed=0,
          model_hash=model_hash,
        )
        raise
      self.store.set_cache(
        client,
        sid,
        _Context(kind, result.caches),
        self.executor.cache_nbytes[kind],
        processed=s.uploaded,
        model_hash=model_hash,
      )
    self._count("positions_run", result.ran)
    return dict(token=result.token, prob=result.prob, processed=s.uploaded)

  def close(self) -> None:
    """Stops the batcher (after the server has stopped taking calls)."""
    if self.batcher is not None:
      self.batcher.close()

  def _close(self, client, header, body) -> dict:
    self.store.close(client, protocol.field(header, "session_id", str))
    return {}
