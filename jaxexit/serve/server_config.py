"""Limits of a CE-CoLLM cloud server (`jaxexit.serve.cloud_service`)."""

import dataclasses

from jaxexit import checks
from jaxexit.serve import split

MiB = 2**20


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerConfig:
  """Limits of a cloud server.

  Attributes:
    max_len: positions per session (capped at the model's max_position).
    budget_bytes: bound on all sessions' states + caches, bytes (LRU
      eviction beyond it).
    max_session_bytes: bound on one session, bytes.
    max_message_bytes: largest request frame accepted, bytes; gRPC's own
      limit is twice this (beyond it gRPC answers RESOURCE_EXHAUSTED).
    buckets: compiled catch-up chunk lengths (`split.CloudModel`).
    max_workers: gRPC handler threads.
    max_batch: most sessions' catch-ups in one compiled call (1: none
      batched).
    batch_window_ms: how long a catch-up waits for others to coincide,
      milliseconds (only with max_batch > 1).
  """

  max_len: int = 256
  budget_bytes: int = 256 * MiB
  max_session_bytes: int = 32 * MiB
  max_message_bytes: int = 4 * MiB
  buckets: tuple[int, ...] = split.DEFAULT_BUCKETS
  max_workers: int = 8
  max_batch: int = 1
  batch_window_ms: float = 2.0

  def __post_init__(self):
    for name in ("max_len", "budget_bytes", "max_session_bytes"):
      checks.positive_int(name, getattr(self, name))
    checks.positive_int("max_message_bytes", self.max_message_bytes)
    checks.positive_int("max_workers", self.max_workers)
    checks.positive_int("max_batch", self.max_batch)
    checks.in_range("batch_window_ms", self.batch_window_ms, 0.0, 1e4)
