"""The naive cloud-edge scheme: no context manager, whole context per request.

CE-CoLLM (spec `docs/papers/llm_exits.md` §4.2) compares its cloud
context manager with the scheme without one: every cloud request carries
the layer-k states of the whole context, and the cloud recomputes blocks
k..L-1 over all of it. `NaiveEdgeClient` is `edge.EdgeClient` in that
scheme (collaborative mode only): nothing is uploaded when the edge
answers; a request goes to a fresh session with every position 0..t-1
(streamed ahead of the request when one message cannot hold them), and
the cloud's catch-up starts from position 0.

The protocol keeps state in sessions, so a stateless request is emulated
by a fresh session per request. Its `Open` (and the old session's
`Close`) runs in a background thread right after the previous request, so
its round trip overlaps the edge's next steps as a stateless design would
not need; when the next request follows at once, the rest of that round
trip is on the critical path (an over-estimate of at most one RTT per
request, small next to the re-sent context on a slow link).

Axes: T positions, D width.
"""

import threading

from jaxexit.serve import edge, edge_link, protocol


class _NoUploader:
  """Stands in for `edge_link.Uploader`: the naive edge never pre-sends."""

  def submit(self, end: int) -> None:
    del end

  def close(self) -> None:
    pass


class _Pending:
  """A session being opened in the background."""

  def __init__(self, link: edge_link.CloudLink, old: str | None):
    self.info, self.error = None, None
    self._thread = threading.Thread(
      target=self._run, args=(link, old), daemon=True
    )
    self._thread.start()

  def _run(self, link, old) -> None:
    if old is not None:
      try:
        link.close_session(old)
      except protocol.ProtocolError:
        pass  # Forgotten by the cloud anyway (LRU under its budget).
    try:
      self.info = link.open("split")
    except protocol.ProtocolError as e:
      self.error = e

  def get(self) -> edge_link.SessionInfo:
    self._thread.join()
    if self.error is not None:
      raise self.error
    return self.info


class NaiveEdgeClient(edge.EdgeClient):
  """`edge.EdgeClient` without the context manager (collaborative only).

  Args: as `edge.EdgeClient`; `config.mode` must be "collaborative".
  """

  def __init__(self, backbone, k, *, config, **kw):
    if config.mode != "collaborative":
      raise ValueError(
        f"the naive scheme is collaborative only; got mode {config.mode!r}"
      )
    super().__init__(backbone, k, config=config, **kw)

  def _open(self, run) -> None:
    run.live = True
    run.uploader = _NoUploader()
    run.session = self.link.open("split")
    run.cloud_has = 0
    run.pending = None

  def _ask_split(self, run, upto: int) -> dict:
    pending = getattr(run, "pending", None)
    if pending is not None:
      run.pending = None
      run.session = pending.get()
    sid, quant = run.session.session_id, self.config.quant
    step = self.link.rows_per_frame(self.d_model, quant)
    start = max(upto - step, 0)
    if start:  # The context does not fit one message: stream its head.
      self.link.upload(sid, 0, run.hidden[:start], quant)
    reply = self.link.infer(sid, upto, start, run.hidden[start:upto], quant)
    run.pending = _Pending(self.link, sid)  # Next request's session.
    return reply

  def _finish(self, run) -> None:
    pending = getattr(run, "pending", None)
    if pending is not None:
      run.pending = None
      try:
        run.session = pending.get()
      except protocol.ProtocolError:
        pass  # Nothing to close: the old one was closed first.
    super()._finish(run)
