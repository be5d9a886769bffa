"""The CE-CoLLM edge client: shallow blocks, exit head, cloud when unsure.

CE-CoLLM (Jin & Wu, arXiv 2411.02829; spec `docs/papers/llm_exits.md`
§4.2, reconstructed): the edge runs the embeddings, blocks 0..k-1 and an
exit head (`split.EdgeModel`). Per generated token, with p the exit
head's max probability (greedy decoding):

* standalone: always the edge's argmax; the cloud is never asked.
* collaborative: if p ≥ θ the edge emits its argmax and hands the new
  positions' layer-k states to the background `edge_link.Uploader`
  (overlapping the next edge step); otherwise it takes back the states
  not yet sent and sends them with an inference request, and the cloud's
  catch-up answers. θ = 1 never exits at the edge (the spec's "1.0 ≈
  never"), so the answer equals the full model's; θ = 0 always exits.
  Latency-aware (CE-CoLLM v2's "latency-aware early exit"; the rule is
  ours, the paper's is not public): with `error_cost_s` = c, the seconds
  of latency one token that may differ from the cloud's is worth, the
  threshold in force is `latency_aware_theta` = min(θ, 1 − R / c), R the
  link's measured request time (`CloudLink.round_trip_s`): the edge keeps
  its token when the expected price of a wrong one, (1 − p) · c, is below
  what asking would cost. A slow link lowers the threshold by itself.
* cloud_only (the baseline): the edge sends token ids and the cloud runs
  the whole model (`Generate`).

Faults: a refused token or other weights raise `protocol.ProtocolError`
("unauthenticated", "model_mismatch"); a session the cloud evicted or
forgot (a restarted cloud) is opened again and its context re-uploaded
from position 0 (at most `max_reuploads` times per answer); any other
failure (a dead cloud, a call past its deadline) switches the rest of the
answer to standalone, recorded in `Answer.fallback`, keeping every token
already produced (cloud_only first runs the edge over the context so
far). The next answer tries the cloud again with a new session.

Axes: T tokens of one edge call, D width, V vocabulary.
"""

import dataclasses
import threading
import time

import numpy as np

from jaxexit import checks
from jaxexit.serve import cloud_exec, edge_link, protocol, split, wire

MODES = ("standalone", "collaborative", "cloud_only")
_REOPEN = ("session_evicted", "unknown_session")
# Misconfiguration, raised instead of hidden behind a fall-back.
_FATAL = ("unauthenticated", "model_mismatch")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EdgeConfig:
  """How the edge decodes.

  Attributes:
    mode: one of `MODES`.
    theta: exit threshold θ in [0, 1] on the exit head's max probability.
    quant: wire mode of the uploaded states ("fp32", "fp16", "int8").
    max_reuploads: session re-opens per answer before falling back.
    error_cost_s: latency-aware exits: seconds of latency that one token
      differing from the cloud's is worth (None: θ alone).
  """

  mode: str = "collaborative"
  theta: float = 0.9
  quant: str = "fp16"
  max_reuploads: int = 2
  error_cost_s: float | None = None

  def __post_init__(self):
    checks.one_of("mode", self.mode, MODES)
    checks.in_range("theta", self.theta, 0.0, 1.0)
    if self.error_cost_s is not None:
      checks.in_range(
        "error_cost_s", self.error_cost_s, 0.0, float("inf"), low_open=True
      )
    checks.one_of("quant", self.quant, wire.MODES)
    checks.positive_int("max_reuploads", self.max_reuploads, minimum=0)


@dataclasses.dataclass(frozen=True)
class TokenStat:
  """One generated token.

  Attributes:
    source: "edge" (exit head) or "cloud".
    prob: the answering side's probability of the token.
    bytes_sent: frame bytes the edge sent during this token (uploads of
      the background thread included), bytes.
    bytes_received: frame bytes received during this token, bytes.
    wall_s: wall time of this token, seconds.
    theta: the exit threshold in force for this token.
  """

  source: str
  prob: float
  bytes_sent: int
  bytes_received: int
  wall_s: float
  theta: float


@dataclasses.dataclass
class Answer:
  """One generation.

  Attributes:
    tokens: the generated ids (stops after `eos_id`).
    stats: one `TokenStat` per token.
    fallback: why the answer fell back to standalone, or None.
    fallback_at: index in `tokens` of the first token after the fall-back.
    reuploads: sessions re-opened and context re-uploaded.
  """

  tokens: list
  stats: list
  fallback: str | None = None
  fallback_at: int | None = None
  reuploads: int = 0


class _Run:
  """Per-answer state."""

  def __init__(self, max_len: int, d: int):
    self.hidden = np.zeros((max_len, d), np.float32)  # Layer-k states.
    self.ids: list[int] = []  # Prompt and generated ids.
    self.done = 0  # Positions the edge has run.
    self.session: edge_link.SessionInfo | None = None
    self.uploader: edge_link.Uploader | None = None
    self.cloud_has = 0  # cloud_only: positions sent to the cloud.
    self.live = False  # Whether the cloud is still used.


class EdgeClient:
  """Generates with the edge model and, per its mode, the cloud.

  Args:
    backbone: the full `DecoderBackbone` (only blocks < k and what the
      head needs are run).
    k: split layer, 1 ≤ k ≤ L - 1.
    config: `EdgeConfig`.
    link: the `edge_link.CloudLink` (None only in standalone mode).
    max_len: positions per answer (prompt + generated).
    heads: exit head (`split.EdgeModel`'s; None: the LM head itself).
  """

  def __init__(self, backbone, k, *, config, link=None, max_len=64, heads=None):
    if config.mode != "standalone" and link is None:
      raise ValueError(f"mode {config.mode!r} needs a CloudLink")
    self.config, self.link, self.max_len = config, link, max_len
    self.model = split.EdgeModel(
      backbone, k, batch=1, max_len=max_len, heads=heads
    )
    self.d_model, self.vocab_size = backbone.d_model, backbone.vocab_size

  def _edge(self, run: _Run, upto: int) -> tuple[int, float]:
    """Runs the edge over positions [run.done, upto); the exit's greedy
    (token, prob). Calls are padded to a power of two (invalid padding)."""
    n, start = upto - run.done, run.done
    t = min(1 << (n - 1).bit_length(), self.max_len - start)
    t = max(t, n)
    ids = np.zeros((1, t), np.int32)
    ids[0, :n] = run.ids[start:upto]
    valid = (np.arange(t) < n)[None]  # [1, t]
    pos = np.where(valid, start + np.arange(t)[None], 0)  # [1, t]
    out = self.model(ids, pos, valid)
    run.hidden[start:upto] = np.asarray(out.hidden[0, :n])  # [n, D]
    run.done = upto
    return cloud_exec.greedy(out.logits[0])

  def generate(self, prompt, max_new_tokens: int, *, eos_id=None) -> Answer:
    """Greedy generation of up to `max_new_tokens` after `prompt`.

    Args:
      prompt: [T] token ids, T ≥ 1.
      max_new_tokens: N ≥ 1; T + N ≤ max_len.
      eos_id: stop after this id (None: never).

    Returns:
      `Answer` (tokens, per-token stats, fall-back record).
    """
    prompt = [int(i) for i in np.asarray(prompt).reshape(-1)]
    checks.positive_int("max_new_tokens", max_new_tokens)
    checks.token_ids("prompt", np.asarray(prompt), self.vocab_size)
    if not prompt or len(prompt) + max_new_tokens > self.max_len:
      raise ValueError(
        f"prompt of {len(prompt)} + {max_new_tokens} new tokens must be "
        f"1..max_len={self.max_len} positions"
      )
    self.model.reset()
    run, answer = _Run(self.max_len, self.d_model), Answer([], [])
    run.ids = list(prompt)
    if self.config.mode != "standalone":
      self._guarded(run, answer, lambda: self._open(run))
    try:
      for _ in range(max_new_tokens):
        token = self._timed(run, answer)
        if token == eos_id:
          break
    finally:
      self._finish(run)
    return answer

  def _timed(self, run: _Run, answer: Answer) -> int:
    link = self.link
    sent, got = (link.bytes_sent, link.bytes_received) if link else (0, 0)
    t0 = time.perf_counter()
    theta = self.theta_now()
    token, prob, source = self._step(run, answer, theta)
    wall = time.perf_counter() - t0
    if link:
      sent, got = link.bytes_sent - sent, link.bytes_received - got
    answer.tokens.append(token)
    answer.stats.append(TokenStat(source, prob, sent, got, wall, theta))
    run.ids.append(token)
    return token

  def theta_now(self) -> float:
    """The exit threshold in force: θ, or `latency_aware_theta` of the
    link's measured request time when `config.error_cost_s` is set."""
    cfg, link = self.config, self.link
    if cfg.error_cost_s is None or link is None or link.round_trip_s is None:
      return cfg.theta
    return latency_aware_theta(cfg.theta, link.round_trip_s, cfg.error_cost_s)

  def _step(self, run, answer, theta: float) -> tuple[int, float, str]:
    upto, mode = len(run.ids), self.config.mode
    if mode == "cloud_only" and run.live:
      reply = self._guarded(run, answer, lambda: self._ask_full(run, upto))
      if reply is not None:
        return reply["token"], reply["prob"], "cloud"
    token, prob = self._edge(run, upto)
    if not run.live:
      return token, prob, "edge"
    if theta < 1 and prob >= theta:
      run.uploader.submit(upto)
      return token, prob, "edge"
    reply = self._guarded(run, answer, lambda: self._ask_split(run, upto))
    if reply is None:
      return token, prob, "edge"
    return reply["token"], reply["prob"], "cloud"

  def _guarded(self, run: _Run, answer: Answer, call):
    """`call()` with re-opens on eviction; None after a fall-back."""
    for attempt in range(self.config.max_reuploads + 1):
      try:
        if attempt:
          self._open(run)
          answer.reuploads += 1
        return call()
      except protocol.ProtocolError as e:
        if e.reason in _FATAL:
          self._finish(run)
          raise
        last = e
        if e.reason not in _REOPEN or not run.live:
          break
    self._fall_back(run, answer, last)
    return None

  def _open(self, run: _Run) -> None:
    if run.uploader is not None:
      run.uploader.close()
    run.live = True
    full = self.config.mode == "cloud_only"
    run.session = self.link.open("full" if full else "split")
    run.cloud_has = 0
    if not full:
      run.uploader = edge_link.Uploader(
        self.link, run.session.session_id, run.hidden, self.config.quant
      )

  def _ask_split(self, run: _Run, upto: int) -> dict:
    start = run.uploader.claim()
    sid, quant = run.session.session_id, self.config.quant
    step = self.link.rows_per_frame(self.d_model, quant)
    if upto - start > step:  # Too many for one message: stream the head.
      self.link.upload(sid, start, run.hidden[start : upto - step], quant)
      start = upto - step
    reply = self.link.infer(sid, upto, start, run.hidden[start:upto], quant)
    run.uploader.mark_sent(upto)
    return reply

  def _ask_full(self, run: _Run, upto: int) -> dict:
    sid = run.session.session_id
    reply = self.link.generate(
      sid, run.cloud_has, np.asarray(run.ids[run.cloud_has : upto]), upto
    )
    run.cloud_has = upto
    return reply

  def _fall_back(self, run, answer, error: protocol.ProtocolError) -> None:
    run.live = False
    if run.uploader is not None:
      run.uploader.close()
    code = getattr(error.code, "name", str(error.code))
    answer.fallback = f"{code} {error}"
    answer.fallback_at = len(answer.tokens)

  def _finish(self, run: _Run) -> None:
    if run.uploader is not None:
      run.uploader.close()
    if run.session is None:
      return
    sid = run.session.session_id
    if run.live:
      _close_quietly(self.link, sid)
    else:  # A dead or stalled cloud must not delay the answer.
      threading.Thread(
        target=_close_quietly, args=(self.link, sid), daemon=True
      ).start()


def latency_aware_theta(
  theta: float, round_trip_s: float, error_cost_s: float
) -> float:
  """min(θ, 1 − R / c), floored at 0: the exit threshold when asking the
  cloud costs R seconds and a token that may differ costs c seconds.

  Args:
    theta: the quality floor θ in [0, 1] (never raised).
    round_trip_s: R ≥ 0, the measured request time.
    error_cost_s: c > 0.
  """
  checks.in_range("theta", theta, 0.0, 1.0)
  checks.in_range("round_trip_s", round_trip_s, 0.0, float("inf"))
  checks.in_range(
    "error_cost_s", error_cost_s, 0.0, float("inf"), low_open=True
  )
  return min(theta, max(0.0, 1.0 - round_trip_s / error_cost_s))


def _close_quietly(link, session_id: str) -> None:
  try:
    link.close_session(session_id)
  except protocol.ProtocolError:
    pass  # The cloud forgets it anyway (eviction under its budget).
