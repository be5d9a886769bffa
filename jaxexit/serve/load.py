"""A load test of the CE-CoLLM cloud: N edge clients at once.

CE-CoLLM (spec `docs/papers/llm_exits.md` §4.1: the service "scales with
multiple edge clients"). `run_load` first runs every client alone, one
after another, then all N together (released by one barrier), each for
`rounds` answers of a bounded number of tokens, and reports what the
cloud held: requests per second, per-request latency percentiles, the
session store's memory (sampled while the clients run) and whether any
client's tokens differ from its run alone (a lost or mixed-up token).

A request is one generated token the cloud answered (an `Infer` or a
cloud-only `Generate`); its latency is the edge's wall time of that token
(edge compute + round trip + cloud compute).
"""

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

_SAMPLE_S = 0.005  # Store sampling period while the clients run.


@dataclasses.dataclass(frozen=True)
class LoadReport:
  """What the concurrent phase measured.

  Attributes:
    clients: N.
    answers: answers generated together (N · rounds).
    tokens: tokens generated together.
    requests: tokens the cloud answered.
    wall_s: wall time of the concurrent phase, seconds.
    requests_per_s: requests / wall_s.
    latency_p50_ms, latency_p99_ms: per-request latency percentiles, ms.
    alone_latency_p50_ms: the same clients' p50 when run alone, ms.
    peak_sessions: most sessions the store held at once.
    peak_total_bytes: most bytes it held at once.
    peak_session_bytes: largest single session seen, bytes.
    budget_bytes: the store's budget, bytes.
    evictions: sessions evicted during the concurrent phase.
    mismatched: clients whose tokens differ from their run alone.
    fallbacks: answers that fell back to standalone.
  """

  clients: int
  answers: int
  tokens: int
  requests: int
  wall_s: float
  requests_per_s: float
  latency_p50_ms: float
  latency_p99_ms: float
  alone_latency_p50_ms: float
  peak_sessions: int
  peak_total_bytes: int
  peak_session_bytes: int
  budget_bytes: int
  evictions: int
  mismatched: int
  fallbacks: int

  def summary(self) -> str:
    """One line for a log."""
    mib = 2**20
    return (
      f"{self.clients} clients: {self.requests} requests in "
      f"{self.wall_s:.2f} s = {self.requests_per_s:.1f} req/s, latency "
      f"p50 {self.latency_p50_ms:.1f} ms p99 {self.latency_p99_ms:.1f} ms "
      f"(alone p50 {self.alone_latency_p50_ms:.1f} ms); store peak "
      f"{self.peak_sessions} sessions, {self.peak_total_bytes / mib:.2f} "
      f"MiB of {self.budget_bytes / mib:.0f} MiB, largest session "
      f"{self.peak_session_bytes / mib:.3f} MiB, {self.evictions} "
      f"evictions; {self.mismatched} clients differ from their run alone, "
      f"{self.fallbacks} fall-backs"
    )


class _Sampler:
  """Polls the store's stats in a thread; keeps the peaks."""

  def __init__(self, stats: Callable):
    self._stats, self._stop = stats, threading.Event()
    self.sessions = self.total = self.session = 0
    self.first = stats()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def _sample(self):
    st = self._stats()
    self.sessions = max(self.sessions, st.sessions)
    self.total = max(self.total, st.total_bytes)
    per = st.per_session_bytes.values()
    self.session = max([self.session, *per])
    return st

  def _run(self) -> None:
    while not self._stop.wait(_SAMPLE_S):
      self._sample()

  def finish(self):
    self._stop.set()
    self._thread.join()
    return self._sample()


def _cloud_latencies(answers) -> list[float]:
  return [
    s.wall_s * 1e3 for a in answers for s in a.stats if s.source == "cloud"
  ]


def run_load(
  clients: Sequence,
  prompts: Sequence,
  max_new_tokens: int,
  *,
  store_stats: Callable,
  rounds: int = 1,
  eos_id: int | None = None,
) -> LoadReport:
  """Runs the clients alone, then together; reports the concurrent phase.

  Args:
    clients: N `edge.EdgeClient`s (each with its own link), N ≤ 32 or so.
    prompts: client i answers `prompts[i % len(prompts)]`.
    max_new_tokens: tokens per answer.
    store_stats: returns the cloud's `sessions.SessionStats` (an
      in-process server's `handle.service.store.stats`).
    rounds: answers per client in the concurrent phase.
    eos_id: stop id (None: never stop early).

  Returns:
    `LoadReport`.
  """
  n = len(clients)
  if n < 1 or rounds < 1 or not prompts:
    raise ValueError(f"need clients, prompts, rounds >= 1: {n=}, {rounds=}")
  mine = [prompts[i % len(prompts)] for i in range(n)]
  gen = lambda i: clients[i].generate(mine[i], max_new_tokens, eos_id=eos_id)
  alone = [gen(i) for i in range(n)]
  results: list[list] = [[] for _ in range(n)]
  errors: list[BaseException] = []
  barrier = threading.Barrier(n + 1)

  def work(i: int) -> None:
    barrier.wait()
    try:
      for _ in range(rounds):
        results[i].append(gen(i))
    except BaseException as e:  # Reported by the caller's thread.
      errors.append(e)

  threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
  for t in threads:
    t.start()
  sampler = _Sampler(store_stats)
  barrier.wait()
  t0 = time.perf_counter()
  for t in threads:
    t.join()
  wall = time.perf_counter() - t0
  last = sampler.finish()
  if errors:
    raise errors[0]
  together = [a for r in results for a in r]
  lat = _cloud_latencies(together)
  pct = lambda q: float(np.percentile(lat, q)) if lat else float("nan")
  alone_lat = _cloud_latencies(alone)
  mismatched = sum(
    any(a.tokens != alone[i].tokens for a in results[i]) for i in range(n)
  )
  return LoadReport(
    clients=n,
    answers=len(together),
    tokens=sum(len(a.tokens) for a in together),
    requests=len(lat),
    wall_s=wall,
    requests_per_s=len(lat) / wall,
    latency_p50_ms=pct(50),
    latency_p99_ms=pct(99),
    alone_latency_p50_ms=float(np.median(alone_lat))
    if alone_lat
    else float("nan"),
    peak_sessions=sampler.sessions,
    peak_total_bytes=sampler.total,
    peak_session_bytes=sampler.session,
    budget_bytes=last.budget_bytes,
    evictions=last.evictions - sampler.first.evictions,
    mismatched=mismatched,
    fallbacks=sum(a.fallback is not None for a in together),
  )
