"""The cloud server as a real process: SIGKILL mid-answer (the edge falls
back and keeps its text), TLS with per-client tokens and a SIGTERM drain,
refusal to start without credentials."""

import signal
import subprocess
import sys

import grpc
import pytest

from jaxexit.serve import protocol
from tests.jaxexit.serve import serve_helpers as sh
from tests.tiers import slow


@slow
def test_process_refuses_to_start_without_credentials():
  cmd = [sys.executable, "-m", "jaxexit.serve.cloud", "--port", "0"]
  cmd += ["--model", "tiny", "--split-layer", "2"]
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
  assert done.returncode == 2
  assert "refusing to start without credentials" in done.stderr
  assert "listening" not in done.stdout


@slow
def test_sigkill_mid_answer_falls_back_and_keeps_the_text(tmp_path):
  server = sh.ServerProcess(
    "--insecure-local", "--tokens-file", sh.write_tokens(tmp_path)
  )
  try:
    port = server.wait_listening()
    client = sh.client(f"127.0.0.1:{port}", theta=1.0)
    infer, calls = client.link.infer, []

    def kill_before_fourth(*args, **kw):
      calls.append(1)
      if len(calls) == 4:
        server.kill()
      return infer(*args, **kw)

    client.link.infer = kill_before_fourth
    ans = client.generate(sh.PROMPT, sh.N_NEW)
  finally:
    server.kill()
  assert server.proc.returncode == -signal.SIGKILL
  ref, _ = sh.reference(sh.PROMPT, sh.N_NEW, lambda s, p: s >= 3)
  assert ans.tokens[:3] == sh.full_reference()[:3]
  assert ans.tokens == ref
  assert ans.fallback_at == 3 and "UNAVAILABLE" in ans.fallback
  assert [s.source for s in ans.stats] == ["cloud"] * 3 + ["edge"] * 7


@slow
def test_tls_server_with_tokens_serves_then_drains_on_sigterm(tmp_path):
  ca, cert, key = sh.tls_files(tmp_path)
  server = sh.ServerProcess(
    "--tokens-file",
    sh.write_tokens(tmp_path),
    "--tls-cert",
    str(tmp_path / "server.pem"),
    "--tls-key",
    str(tmp_path / "server.key"),
  )
  try:
    port = server.wait_listening()
    target = f"127.0.0.1:{port}"
    tls = dict(root_certificates=ca, server_name="localhost")
    ans = sh.client(target, **tls).generate(sh.PROMPT, sh.N_NEW)
    assert ans.tokens == sh.full_reference() and ans.fallback is None
    with pytest.raises(protocol.ProtocolError, match="unauthenticated"):
      sh.client(target, token="y" * 30, **tls).generate(sh.PROMPT, 2)
    # A plaintext client cannot talk to the TLS port.
    with pytest.raises(protocol.ProtocolError) as e:
      sh.link(target, deadline_s=5.0).open("split")
    assert e.value.code in (
      grpc.StatusCode.UNAVAILABLE,
      grpc.StatusCode.DEADLINE_EXCEEDED,
    )
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=60) == 0
    assert "cloud: stopped\n" in server.output()
  finally:
    server.kill()
