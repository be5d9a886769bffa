"""Shared pieces of the CE-CoLLM service tests: the tiny model, clients,
an independent reference decoder, subprocess servers and TLS files."""

import functools
import os
import queue
import shutil
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxexit.serve import cloud, edge, edge_link, models, server_config

K = 2  # split layer of the 4-block tiny model
MAX_LEN = 64
BUCKETS = (1, 2, 4, 8, 16)
ALICE, BOB = "alice-token-" + "a" * 20, "bob-token-" + "b" * 20
TOKENS = {ALICE: "alice", BOB: "bob"}
PROMPT = np.arange(5, 12)  # 7 tokens
N_NEW = 10


@functools.cache
def tiny():
  """(backbone, weights hash) of the seeded tiny model."""
  model = models.build_model("tiny")
  return model, models.weights_hash(model)


def start(port=0, **config) -> cloud.ServerHandle:
  """An in-process server of the tiny model with ALICE's and BOB's tokens."""
  model, digest = tiny()
  config = dict(dict(max_len=MAX_LEN, buckets=BUCKETS), **config)
  return cloud.start_server(
    model,
    K,
    port=port,
    tokens=TOKENS,
    config=server_config.ServerConfig(**config),
    model_hash=digest,
  )


def link(target, token=ALICE, deadline_s=10.0, **kw) -> edge_link.CloudLink:
  _, digest = tiny()
  kw.setdefault("model_hash", digest)
  return edge_link.CloudLink(
    target, token=token, split_layer=K, deadline_s=deadline_s, **kw
  )


def client(
  target, mode="collaborative", theta=1.0, quant="fp32", error_cost_s=None, **kw
):
  """An `EdgeClient` of the tiny model (link keywords in `kw`)."""
  model, _ = tiny()
  cfg = edge.EdgeConfig(
    mode=mode, theta=theta, quant=quant, error_cost_s=error_cost_s
  )
  lk = None if mode == "standalone" else link(target, **kw)
  return edge.EdgeClient(model, K, config=cfg, link=lk, max_len=MAX_LEN)


@functools.partial(jax.jit, static_argnames="graphdef")
def _logits(graphdef, params, ids, length):
  """Exit (layer K) and final logits [V] at position length - 1 of the
  padded ids [1, MAX_LEN], from fresh caches: no state is reused."""
  model = nnx.merge(graphdef, params)
  positions = jnp.arange(MAX_LEN)[None]  # [1, T]
  valid = positions < length
  caches = model.init_cache(1, MAX_LEN)
  h = model.embed(ids)
  outs = []
  for i in range(model.num_layers):
    if i == K:
      outs.append(h)
    h, _ = model.layer(i, h, caches[i], positions, valid)
  outs.append(h)
  last = [jax.lax.dynamic_slice_in_dim(o, length - 1, 1, 1) for o in outs]
  return [model.lm_head(model.final_norm(x))[0, 0] for x in last]  # [V]


def reference(prompt, n, use_edge, theta_margin=None):
  """Greedy tokens where step s takes the exit's argmax if
  use_edge(s, p_exit) else the full model's; recomputes the whole
  sequence at each step (independent of the split code's caches).

  Returns (tokens, exit probabilities [n])."""
  model, _ = tiny()
  graphdef, params = nnx.split(model)
  ids, probs = list(int(i) for i in prompt), []
  for s in range(n):
    padded = np.zeros((1, MAX_LEN), np.int32)
    padded[0, : len(ids)] = ids
    exit_l, full_l = _logits(graphdef, params, padded, len(ids))
    exit_l, full_l = np.asarray(exit_l), np.asarray(full_l)
    p = np.exp(exit_l - exit_l.max())
    p_max = float(p.max() / p.sum())
    probs.append(p_max)
    ids.append(int(np.argmax(exit_l if use_edge(s, p_max) else full_l)))
  return ids[len(prompt) :], np.array(probs)


def full_reference(prompt=PROMPT, n=N_NEW):
  return reference(prompt, n, lambda s, p: False)[0]


def edge_reference(prompt=PROMPT, n=N_NEW):
  return reference(prompt, n, lambda s, p: True)[0]


def tls_files(directory) -> tuple[bytes, bytes, bytes]:
  """(CA PEM, server certificate PEM, server key PEM) for localhost and
  127.0.0.1, made by openssl (the command in `jaxexit.serve.cloud`'s
  docstring); skips the test where openssl is missing."""
  if shutil.which("openssl") is None:
    pytest.skip("no openssl on PATH to make test TLS certificates")
  d = str(directory)
  ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
  with open(os.path.join(d, "san.ext"), "w") as f:
    f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
  cmds = [
    ["req", "-x509", *ec, "-days", "2", "-subj", "/CN=ce-collm-test-ca"]
    + ["-keyout", "ca.key", "-out", "ca.pem"],
    ["req", *ec, "-subj", "/CN=localhost", "-keyout", "server.key"]
    + ["-out", "server.csr"],
    ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey"]
    + ["ca.key", "-CAcreateserial", "-days", "2", "-extfile", "san.ext"]
    + ["-out", "server.pem"],
  ]
  for cmd in cmds:
    subprocess.run(["openssl", *cmd], cwd=d, check=True, capture_output=True)
  read = lambda name: open(os.path.join(d, name), "rb").read()
  return read("ca.pem"), read("server.pem"), read("server.key")


def write_tokens(directory) -> str:
  path = os.path.join(str(directory), "tokens.txt")
  with open(path, "w") as f:
    f.write("# test clients\n")
    f.writelines(f"{client} {token}\n" for token, client in TOKENS.items())
  return path


class ServerProcess:
  """`python -m jaxexit.serve.cloud` as a subprocess (tiny model, k=K)."""

  def __init__(self, *flags):
    cmd = [sys.executable, "-m", "jaxexit.serve.cloud", "--port", "0"]
    cmd += ["--model", "tiny", "--split-layer", str(K)]
    cmd += ["--max-len", str(MAX_LEN), "--no-warmup", *flags]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    self.proc = subprocess.Popen(
      cmd,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      env=env,
    )
    self.lines = queue.Queue()
    threading.Thread(
      target=lambda: [self.lines.put(x) for x in self.proc.stdout],
      daemon=True,
    ).start()

  def wait_listening(self, timeout=90.0) -> int:
    """The port, once the server prints `listening on HOST:PORT`."""
    seen = []
    while True:
      try:
        line = self.lines.get(timeout=timeout)
      except queue.Empty:
        raise AssertionError(f"no 'listening on' line; output: {seen}")
      seen.append(line)
      if line.startswith("listening on 127.0.0.1:"):
        return int(line.rsplit(":", 1)[1])

  def output(self) -> list[str]:
    rest = []
    while not self.lines.empty():
      rest.append(self.lines.get())
    return rest

  def kill(self) -> None:
    if self.proc.poll() is None:
      self.proc.kill()
    self.proc.wait(timeout=30)
