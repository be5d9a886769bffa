"""The CE-CoLLM cloud server process (and its in-process form).

CE-CoLLM (Jin & Wu, arXiv 2411.02829; spec `docs/papers/llm_exits.md`
§4.2): the cloud holds blocks k+1..L (0-based k..L-1), the final norm and
the LM head, stores each edge session's uploaded layer-k states and runs
the exact catch-up on request; it also serves the whole model for the
cloud-only baseline. Handlers: `jaxexit.serve.cloud_service`; protocol:
`jaxexit.serve.protocol`.

  python -m jaxexit.serve.cloud --port 8000 --model tiny --split-layer 2 \\
    --tokens-file tokens.txt --tls-cert server.pem --tls-key server.key

prints `listening on HOST:PORT` (flushed) once it serves, and on SIGTERM
or SIGINT stops taking calls, lets the calls in flight finish (up to
`--grace-s`), prints `cloud: stopped` and exits 0. Without credentials
(a tokens file or `--token` flags, and a TLS certificate and key) it
refuses to start (exit 2) unless `--insecure-local` is given: then it
serves plaintext on a loopback address only, and without tokens admits
every caller as one client, "local".

Tokens: see `jaxexit.serve.auth`. A test CA and a server certificate for
`localhost`/127.0.0.1 (the edge passes `ca.pem` and, for an IP target,
the name override "localhost"):

  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 \\
    -nodes -days 30 -subj /CN=ce-collm-test-ca -keyout ca.key -out ca.pem
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \\
    -subj /CN=localhost -keyout server.key -out server.csr
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > san.ext
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key \\
    -CAcreateserial -days 30 -extfile san.ext -out server.pem
"""

import argparse
import dataclasses
import ipaddress
import signal
import sys
import threading
from concurrent import futures

import grpc

from jaxexit.serve import auth

_LOOPBACK_NAMES = ("localhost",)


@dataclasses.dataclass
class ServerHandle:
  """A started server.

  Attributes:
    server: the `grpc.Server`.
    service: its `CloudService` (store, counters).
    host: the address it listens on.
    port: the port bound (the chosen one for port 0).
  """

  server: grpc.Server
  service: object
  host: str
  port: int

  @property
  def target(self) -> str:
    """`HOST:PORT` for a client channel."""
    return f"{self.host}:{self.port}"

  def stop(self, grace_s: float | int | None = 5.0) -> None:
    """Refuses new calls, waits up to `grace_s` for those in flight."""
    self.server.stop(grace_s).wait()
    self.service.close()


def start_server(
  backbone,
  k: int,
  *,
  host: str = "127.0.0.1",
  port: int = 0,
  tokens: dict | None = None,
  tls: tuple[bytes, bytes] | None = None,
  config=None,
  warmup: bool = False,
  model_hash: str | None = None,
) -> ServerHandle:
  """Starts the cloud service in this process (gRPC's own threads).

  Args:
    backbone: the full `DecoderBackbone`.
    k: split layer, 1 ≤ k ≤ L - 1.
    host, port: where to listen (port 0: any free one).
    tokens: {token: client_id}, or None to admit anyone as "local".
    tls: (certificate chain PEM, private key PEM), or None for plaintext.
    config: `server_config.ServerConfig` (None: defaults).
    warmup: compile every bucket before serving.
    model_hash: `models.weights_hash(backbone)` if already known.
  """
  from jaxexit.serve import cloud_service, models, server_config

  config = server_config.ServerConfig() if config is None else config
  service = cloud_service.CloudService(
    backbone,
    k,
    model_hash=model_hash or models.weights_hash(backbone),
    authenticator=auth.Authenticator(tokens),
    config=config,
  )
  if warmup:
    service.executor.warmup()
  limit = 2 * config.max_message_bytes + 64 * 1024
  server = grpc.server(
    futures.ThreadPoolExecutor(max_workers=config.max_workers),
    handlers=[service.handler()],
    options=[
      ("grpc.max_receive_message_length", limit),
      ("grpc.max_send_message_length", limit),
    ],
  )
  address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
  if tls is None:
    bound = server.add_insecure_port(address)
  else:
    creds = grpc.ssl_server_credentials([(tls[1], tls[0])])
    bound = server.add_secure_port(address, creds)
  if not bound:
    raise OSError(f"could not bind {address}")
  server.start()
  return ServerHandle(server, service, host, bound)


def is_loopback(host: str) -> bool:
  """True for localhost and loopback IP addresses."""
  if host in _LOOPBACK_NAMES:
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return False


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m jaxexit.serve.cloud", description=__doc__.split("\n")[0]
  )
  p.add_argument("--port", type=int, required=True, help="0: any free port")
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--model", required=True, help="tiny | smollm2")
  p.add_argument("--seed", type=int, default=0, help="seed of --model tiny")
  p.add_argument("--split-layer", type=int, required=True, help="k")
  p.add_argument("--tokens-file", help="CLIENT_ID TOKEN per line")
  p.add_argument(
    "--token",
    action="append",
    default=[],
    help="CLIENT_ID=TOKEN (repeatable; visible in `ps`: prefer a file)",
  )
  p.add_argument("--tls-cert", help="server certificate chain, PEM")
  p.add_argument("--tls-key", help="server private key, PEM")
  p.add_argument(
    "--insecure-local",
    action="store_true",
    help="allow plaintext and no tokens, on a loopback host only",
  )
  p.add_argument("--max-len", type=int, default=256)
  p.add_argument("--budget-mib", type=float, default=256.0)
  p.add_argument("--max-session-mib", type=float, default=32.0)
  p.add_argument("--max-message-mib", type=float, default=4.0)
  p.add_argument("--workers", type=int, default=8)
  p.add_argument(
    "--max-batch",
    type=int,
    default=1,
    help="most sessions' catch-ups per compiled call (1: no batching)",
  )
  p.add_argument("--batch-window-ms", type=float, default=2.0)
  p.add_argument("--grace-s", type=float, default=10.0)
  p.add_argument("--no-warmup", action="store_true")
  return p


def _credentials(args) -> tuple[dict | None, tuple[bytes, bytes] | None]:
  """(tokens, tls) from the flags; raises ValueError when they are short."""
  tokens = {}
  if args.tokens_file:
    tokens.update(auth.read_tokens_file(args.tokens_file))
  flags = auth.parse_token_flags(args.token)
  if set(flags) & set(tokens) or set(flags.values()) & set(tokens.values()):
    raise ValueError("--token repeats a client or token of --tokens-file")
  tokens.update(flags)
  if bool(args.tls_cert) != bool(args.tls_key):
    raise ValueError("give both --tls-cert and --tls-key, or neither")
  tls = None
  if args.tls_cert:
    with open(args.tls_cert, "rb") as c, open(args.tls_key, "rb") as k:
      tls = (c.read(), k.read())
  if args.insecure_local:
    if not is_loopback(args.host):
      raise ValueError(
        f"--insecure-local serves loopback only; --host {args.host} is not"
      )
  elif not tokens or tls is None:
    raise ValueError(
      "refusing to start without credentials: give --tokens-file (or "
      "--token) and --tls-cert/--tls-key, or --insecure-local for a "
      "plaintext loopback server"
    )
  return tokens or None, tls


def main(argv: list[str] | None = None) -> int:
  """Serves until SIGTERM/SIGINT; returns 0 (2 on bad flags)."""
  args = _parser().parse_args(argv)
  try:
    tokens, tls = _credentials(args)
    from jaxexit.serve import models, server_config

    mib = lambda x: int(x * 2**20)
    config = server_config.ServerConfig(
      max_len=args.max_len,
      budget_bytes=mib(args.budget_mib),
      max_session_bytes=mib(args.max_session_mib),
      max_message_bytes=mib(args.max_message_mib),
      max_workers=args.workers,
      max_batch=args.max_batch,
      batch_window_ms=args.batch_window_ms,
    )
    backbone = models.build_model(args.model, seed=args.seed)
    from jaxexit.serve import split

    split.check_split(backbone.num_layers, args.split_layer)
  except (ValueError, OSError, ImportError) as e:
    print(f"cloud: {e}", file=sys.stderr, flush=True)
    return 2
  stop = threading.Event()
  # Handlers first: a parent may signal as soon as it reads the line.
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: stop.set())
  handle = start_server(
    backbone,
    args.split_layer,
    host=args.host,
    port=args.port,
    tokens=tokens,
    tls=tls,
    config=config,
    warmup=not args.no_warmup,
  )
  print(f"listening on {handle.target}", flush=True)
  while not stop.wait(0.5):  # Wakes for signals on every platform.
    pass
  handle.stop(args.grace_s)
  print("cloud: stopped", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
