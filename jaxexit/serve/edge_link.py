"""The edge's side of the CE-CoLLM RPCs: a typed client and the uploader.

CE-CoLLM (spec `docs/papers/llm_exits.md` §4.2) uploads each position's
layer-k state asynchronously, so that at request time only the positions
not yet sent travel with the inference request. `CloudLink` wraps one
gRPC channel (TLS or plaintext, the client's token on every call, a
deadline on every call, byte counters); `Uploader` is the background
thread that streams submitted positions in order and lets the edge take
back, at request time, those it has not started sending. Frames and
methods: `jaxexit.serve.protocol`. Every failure is raised as a
`protocol.ProtocolError` (reason "transport" for a dead or stalled link).

Axes: R positions, D width.
"""

import threading
import time
from typing import NamedTuple

import grpc
import numpy as np

from jaxexit.serve import auth, protocol, wire

_FRAME_SLACK = 1024  # Bytes left in a message for the frame's header.


class SessionInfo(NamedTuple):
  """What `Open` returned.

  Attributes:
    session_id: the session's id (secret to the client).
    max_len: positions the cloud keeps per session.
    max_message_bytes: the cloud's largest accepted request, bytes.
  """

  session_id: str
  max_len: int
  max_message_bytes: int


class CloudLink:
  """One channel to a cloud server.

  Args:
    target: `HOST:PORT`.
    token: this client's token (None for an anonymous local server).
    model_hash: `models.weights_hash` of the edge's backbone.
    split_layer: the edge's k.
    deadline_s: deadline of every call, seconds.
    root_certificates: PEM of the CA that signed the server's certificate,
      or None for a plaintext channel.
    server_name: TLS name to check instead of the target's host.
  """

  def __init__(
    self,
    target: str,
    *,
    token: str | None,
    model_hash: str,
    split_layer: int,
    deadline_s: float = 10.0,
    root_certificates: bytes | None = None,
    server_name: str | None = None,
  ):
    self.model_hash, self.split_layer = model_hash, split_layer
    self.deadline_s = deadline_s
    self.max_message_bytes = 4 * 2**20  # Until `open` tells the cloud's.
    options = [("grpc.max_receive_message_length", 64 * 2**20)]
    options.append(("grpc.max_send_message_length", 64 * 2**20))
    if server_name:
      options.append(("grpc.ssl_target_name_override", server_name))
    if root_certificates is None:
      self._channel = grpc.insecure_channel(target, options=options)
    else:
      creds = grpc.ssl_channel_credentials(root_certificates)
      self._channel = grpc.secure_channel(target, creds, options=options)
    self._metadata = auth.call_metadata(token)
    self._calls = {
      m: self._channel.unary_unary(protocol.method_path(m))
      for m in ("Open", "Infer", "Generate", "Close")
    }
    self._upload = self._channel.stream_unary(protocol.method_path("Upload"))
    self._lock = threading.Lock()
    self.bytes_sent = 0  # Frame bytes (headers + payloads), all threads.
    self.bytes_received = 0
    # Smoothed wall time of a request (Open, Infer, Generate), seconds:
    # the measured price of asking the cloud (None before the first).
    self.round_trip_s: float | None = None

  def _count(self, sent: int, received: int) -> None:
    with self._lock:
      self.bytes_sent += sent
      self.bytes_received += received

  def _reply(self, reply: bytes) -> dict:
    self._count(0, len(reply))
    return protocol.decode(reply)[0]

  def _call(self, name: str, header: dict, body: bytes = b"", timeout=None):
    frame = protocol.encode(header, body)
    self._count(len(frame), 0)
    t0 = time.perf_counter()
    try:
      reply = self._calls[name](
        frame,
        timeout=self.deadline_s if timeout is None else timeout,
        metadata=self._metadata,
      )
    except grpc.RpcError as e:
      raise protocol.from_rpc_error(e) from None
    if name != "Close":
      self._measured(time.perf_counter() - t0)
    return self._reply(reply)

  def _measured(self, seconds: float) -> None:
    """Folds one request's wall time into `round_trip_s` (EWMA, 1/2)."""
    old = self.round_trip_s
    self.round_trip_s = seconds if old is None else 0.5 * (old + seconds)

  def _ids(self, session_id: str) -> dict:
    return dict(session_id=session_id, model_hash=self.model_hash)

  def open(self, mode: str) -> SessionInfo:
    """Opens a session ("split": collaborative, "full": cloud-only).

    Raises:
      ProtocolError: e.g. "model_mismatch" when the weights differ.
    """
    h = self._call(
      "Open",
      dict(model_hash=self.model_hash, mode=mode, split_layer=self.split_layer),
    )
    if h.get("model_hash") != self.model_hash:
      raise protocol.ProtocolError(
        "model_mismatch", "the cloud answered with another weights hash"
      )
    self.max_message_bytes = int(h["max_message_bytes"])
    return SessionInfo(
      h["session_id"], int(h["max_len"]), int(h["max_message_bytes"])
    )

  def rows_per_frame(self, d: int, quant: str) -> int:
    """Positions of width d that fit one message."""
    per = wire.payload_bytes(1, d, quant)
    return max(1, (self.max_message_bytes - _FRAME_SLACK) // per)

  def upload(
    self, session_id: str, start: int, rows: np.ndarray, quant: str
  ) -> int:
    """Streams rows [R, D] as positions start, ...; returns `uploaded`."""
    step = self.rows_per_frame(rows.shape[1], quant)
    frames = []
    for lo in range(0, rows.shape[0], step):
      body = wire.to_bytes(wire.quantize(rows[lo : lo + step], quant))
      header = dict(self._ids(session_id), start=start + lo)
      frames.append(protocol.encode(header, body))
    self._count(sum(map(len, frames)), 0)
    try:
      reply = self._upload(
        iter(frames), timeout=self.deadline_s, metadata=self._metadata
      )
    except grpc.RpcError as e:
      raise protocol.from_rpc_error(e) from None
    return int(self._reply(reply)["uploaded"])

  def infer(
    self,
    session_id: str,
    expect: int,
    start: int,
    rows: np.ndarray | None,
    quant: str,
  ) -> dict:
    """Inference request: rows [R, D] (positions start..expect-1, the ones
    not yet sent; None if none) ride along. Returns {token, prob, ...}."""
    header = dict(self._ids(session_id), expect=expect)
    body = b""
    if rows is not None and rows.shape[0]:
      header["start"] = start
      body = wire.to_bytes(wire.quantize(rows, quant))
    return self._call("Infer", header, body)

  def generate(
    self, session_id: str, start: int, tokens: np.ndarray, expect: int
  ) -> dict:
    """Cloud-only step: token ids at positions start..expect-1."""
    header = dict(self._ids(session_id), start=start, expect=expect)
    body = np.asarray(tokens, "<i4").tobytes()
    return self._call("Generate", header, body)

  def close_session(self, session_id: str, timeout: float = 1.0) -> None:
    """Frees the session on the cloud."""
    self._call("Close", dict(session_id=session_id), timeout=timeout)

  def close(self) -> None:
    """Closes the channel."""
    self._channel.close()


class Uploader:
  """Background uploads of one session's positions, in order.

  `submit(end)` makes positions up to `end` (exclusive) of the edge's
  state buffer eligible; the thread sends everything eligible in one
  `Upload` call at a time. `claim()` takes back what it has not started
  sending, waits for the call in flight, and returns the first position
  the cloud does not hold; it raises the thread's error, if any.

  Args:
    link: the `CloudLink`.
    session_id: the session.
    rows: [max_len, D] the edge's layer-k states (read, never written,
      at positions below the submitted end).
    quant: wire mode.
    start: positions [0, start) are already on the cloud.
  """

  def __init__(self, link: CloudLink, session_id, rows, quant, start=0):
    self._link, self._sid, self._rows, self._quant = (
      link,
      session_id,
      rows,
      quant,
    )
    self._cv = threading.Condition()
    self._sent = start  # The cloud holds (or is being sent) [0, _sent).
    self._end = start  # Eligible: [_sent, _end).
    self._busy = False
    self._closed = False
    self.error: protocol.ProtocolError | None = None
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def submit(self, end: int) -> None:
    """Makes positions below `end` eligible for upload."""
    with self._cv:
      self._end = max(self._end, end)
      self._cv.notify_all()

  def claim(self) -> int:
    """Takes back unsent positions; returns the first the cloud lacks."""
    with self._cv:
      self._end = self._sent
      while self._busy:
        self._cv.wait()
      if self.error is not None:
        raise self.error
      return self._sent

  def mark_sent(self, end: int) -> None:
    """Records that the edge itself sent positions up to `end` (inline
    with a request, after `claim`)."""
    with self._cv:
      self._sent = self._end = max(self._sent, end)

  def close(self) -> None:
    """Stops the thread after its call in flight (does not wait)."""
    with self._cv:
      self._closed = True
      self._cv.notify_all()

  def _run(self) -> None:
    while True:
      with self._cv:
        while not self._closed and self._end <= self._sent:
          self._cv.wait()
        if self._closed or self.error is not None:
          return
        start, end = self._sent, self._end
        self._busy = True
      try:
        self._link.upload(self._sid, start, self._rows[start:end], self._quant)
        err = None
      except protocol.ProtocolError as e:
        err = e
      with self._cv:
        self._busy = False
        if err is None:
          self._sent = end
        else:
          self.error = err
        self._cv.notify_all()
        if err is not None:
          return
