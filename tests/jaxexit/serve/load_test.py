"""Load test: N concurrent edge clients against one cloud on loopback,
bounded in tokens; no lost or mixed-up tokens, memory within budget."""

import pytest

from jaxexit.serve import load
from tests.jaxexit.serve import serve_helpers as sh
from tests.tiers import slow

N_CLIENTS = 8
N_TOKENS = 6
PROMPTS = [list(range(3 + i, 9 + 2 * i)) for i in range(4)]  # 6..9 tokens


def _run(n: int, budget_bytes: int, theta: float = 1.0, rounds: int = 2):
  server = sh.start(budget_bytes=budget_bytes)
  tokens = {**sh.TOKENS}
  clients = [
    sh.client(server.target, theta=theta, token=list(tokens)[i % 2])
    for i in range(n)
  ]
  try:
    return load.run_load(
      clients,
      PROMPTS,
      N_TOKENS,
      store_stats=server.service.store.stats,
      rounds=rounds,
    )
  finally:
    for c in clients:
      c.link.close()
    server.stop(None)


@slow
def test_eight_clients_lose_and_mix_no_token():
  budget = 4 * 2**20
  rep = _run(N_CLIENTS, budget)
  print(rep.summary())
  assert rep.clients == N_CLIENTS and rep.answers == 2 * N_CLIENTS
  assert rep.mismatched == 0 and rep.fallbacks == 0
  # θ = 1: the cloud answers every token.
  assert rep.requests == rep.tokens == 2 * N_CLIENTS * N_TOKENS
  assert rep.requests_per_s > 0
  assert 0 < rep.latency_p50_ms <= rep.latency_p99_ms
  assert 1 <= rep.peak_sessions <= N_CLIENTS
  assert 0 < rep.peak_session_bytes <= rep.peak_total_bytes <= budget
  assert rep.budget_bytes == budget and rep.evictions == 0


def test_run_load_refuses_no_clients():
  with pytest.raises(ValueError, match="clients"):
    load.run_load([], PROMPTS, 2, store_stats=lambda: None)
