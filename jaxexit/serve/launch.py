"""Starts and stops the CE-CoLLM processes: the cloud server and the proxy.

CE-CoLLM (spec `docs/papers/llm_exits.md` §4.2) is a split deployment:
the cloud (`python -m jaxexit.serve.cloud`) and the network shaper
(`python -m jaxexit.serve.netshape`) run as their own processes. Both
print `listening on HOST:PORT` (flushed) once they serve and stop
cleanly on SIGTERM. `Child` starts one, reads its output in a daemon
thread, waits for that line, and `stop` sends SIGTERM, waits, and kills
whatever is still alive, so a caller's `finally` (Ctrl-C included) leaves
no process behind. `Children` does the same for several, in reverse
order of start.
"""

import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time

_LISTENING = "listening on "


class ChildError(RuntimeError):
  """A child exited or stayed silent before it listened."""


class Child:
  """One child process that announces `listening on HOST:PORT`.

  Args:
    name: what to call it in errors ("cloud", "proxy ...").
    cmd: the argv.
    env: extra environment variables.
  """

  def __init__(self, name: str, cmd: list[str], env: dict | None = None):
    self.name, self.cmd = name, cmd
    self.proc = subprocess.Popen(
      cmd,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      stdin=subprocess.DEVNULL,
      text=True,
      env={**os.environ, **(env or {})},
    )
    self.lines: list[str] = []
    self._queue: queue.Queue = queue.Queue()
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self) -> None:
    for line in self.proc.stdout:
      self.lines.append(line.rstrip("\n"))
      self._queue.put(line)
    self._queue.put(None)

  @property
  def pid(self) -> int:
    return self.proc.pid

  def wait_listening(self, timeout_s: float | int = 300.0) -> str:
    """Returns `HOST:PORT` once the child prints its `listening on` line.

    Raises:
      ChildError: it exited first, or said nothing for `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    while True:
      try:
        line = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
      except queue.Empty:
        line = False
      if line and line.startswith(_LISTENING):
        return line[len(_LISTENING) :].strip()
      if not line:  # None: end of output; False: the deadline passed.
        tail = "\n  ".join(self.lines[-20:])
        why = "exited" if line is None else f"was silent {timeout_s:g} s"
        raise ChildError(f"{self.name} {why} before listening:\n  {tail}")

  def alive(self) -> bool:
    return self.proc.poll() is None

  def stop(self, grace_s: float | int = 15.0) -> int:
    """SIGTERM, up to `grace_s` to exit, then SIGKILL; the exit status."""
    if self.alive():
      self.proc.send_signal(signal.SIGTERM)
      try:
        self.proc.wait(timeout=grace_s)
      except subprocess.TimeoutExpired:
        self.proc.kill()
    return self.proc.wait(timeout=30)


class Children:
  """Started children, stopped together (last started, first stopped)."""

  def __init__(self):
    self.all: list[Child] = []

  def start(self, name: str, cmd: list[str], **kw) -> Child:
    child = Child(name, cmd, **kw)
    self.all.append(child)
    return child

  @property
  def pids(self) -> list[int]:
    return [c.pid for c in self.all]

  def stop(self, grace_s: float | int = 15.0) -> dict[str, int]:
    """Stops every child, even when stopping one fails; name -> status."""
    codes = {}
    for child in reversed(self.all):
      try:
        codes[child.name] = child.stop(grace_s)
      except BaseException:  # Keep going: none may be left behind.
        child.proc.kill()
        codes[child.name] = child.proc.wait(timeout=30)
    return codes

  def __enter__(self) -> "Children":
    return self

  def __exit__(self, *exc) -> None:
    self.stop()


def new_token() -> str:
  """A fresh client token (256 bits, URL-safe)."""
  return secrets.token_urlsafe(32)


def write_tokens_file(path: str, tokens: dict[str, str]) -> str:
  """Writes {client_id: token} as `CLIENT_ID TOKEN` lines, mode 0600."""
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
  with os.fdopen(fd, "w") as f:
    f.writelines(f"{client} {token}\n" for client, token in tokens.items())
  return path


def cloud_command(
  model: str,
  split_layer: int,
  *,
  tokens_file: str,
  max_len: int,
  host: str = "127.0.0.1",
  tls: tuple[str, str] | None = None,
  extra: tuple[str, ...] = (),
) -> list[str]:
  """argv of a cloud server on a free port of `host`.

  Args:
    model: `models.MODEL_NAMES` entry.
    split_layer: k.
    tokens_file: `CLIENT_ID TOKEN` lines (see `write_tokens_file`).
    max_len: positions per session.
    host: where to listen.
    tls: (certificate PEM path, key PEM path), or None for a plaintext
      loopback server (`--insecure-local`).
    extra: further flags of `jaxexit.serve.cloud`.
  """
  cmd = [sys.executable, "-m", "jaxexit.serve.cloud", "--port", "0"]
  cmd += ["--host", host, "--model", model, "--split-layer", str(split_layer)]
  cmd += ["--tokens-file", tokens_file, "--max-len", str(max_len)]
  if tls is None:
    cmd.append("--insecure-local")
  else:
    cmd += ["--tls-cert", tls[0], "--tls-key", tls[1]]
  return cmd + list(extra)


def proxy_command(
  target: str,
  *,
  rtt_ms: float | int,
  bandwidth_mbit: float | int,
  seed: int = 0,
) -> list[str]:
  """argv of a shaping proxy on a free loopback port in front of `target`."""
  cmd = [sys.executable, "-m", "jaxexit.serve.netshape"]
  cmd += ["--listen", "127.0.0.1:0", "--target", target]
  cmd += ["--rtt-ms", f"{rtt_ms:g}", "--bandwidth-mbit", f"{bandwidth_mbit:g}"]
  return cmd + ["--seed", str(seed)]


def pid_alive(pid: int) -> bool:
  """Whether a process with this id exists (and is not a zombie)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except FileNotFoundError:
    return False
  except OSError:
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return False
    return True
