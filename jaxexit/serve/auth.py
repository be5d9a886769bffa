"""Client authentication of the CE-CoLLM cloud service: per-client tokens.

Every client presents its own secret token in the gRPC metadata
(`authorization: Bearer <token>`, `jaxexit.serve.protocol.AUTH_KEY`); the
server maps it to the client's id, which owns the client's sessions in
`jaxexit.serve.sessions.SessionStore`. A tokens file has one
`CLIENT_ID TOKEN` pair per line (`#` starts a comment); make one with

  python -c "import secrets; print('edge-a', secrets.token_urlsafe(32))" \\
    >> tokens.txt; chmod 600 tokens.txt

Tokens are at least `MIN_TOKEN_CHARS` characters, unique, and compared in
constant time against every known token (a lookup takes the same time
whether the first characters match or not).
"""

import hmac
from collections.abc import Iterable, Mapping, Sequence

from jaxexit.serve import protocol

MIN_TOKEN_CHARS = 16
LOCAL_CLIENT = "local"  # The one client of an --insecure-local server.


def parse_tokens(lines: Iterable[str], source: str = "tokens") -> dict:
  """{token: client_id} from `CLIENT_ID TOKEN` lines.

  Raises:
    ValueError: a malformed line, a short token, a repeated token or id.
  """
  tokens: dict[str, str] = {}
  for n, line in enumerate(lines, 1):
    line = line.split("#", 1)[0].strip()
    if not line:
      continue
    parts = line.split()
    if len(parts) != 2:
      raise ValueError(f"{source}:{n}: expected 'CLIENT_ID TOKEN'")
    client, token = parts
    if len(token) < MIN_TOKEN_CHARS:
      raise ValueError(
        f"{source}:{n}: token of client {client!r} has {len(token)} "
        f"characters; at least {MIN_TOKEN_CHARS} are needed"
      )
    if token in tokens or client in tokens.values():
      raise ValueError(f"{source}:{n}: client {client!r} or its token repeat")
    tokens[token] = client
  return tokens


def read_tokens_file(path: str) -> dict:
  """`parse_tokens` of a file; raises ValueError if it names no client."""
  with open(path, encoding="utf-8") as f:
    tokens = parse_tokens(f, path)
  if not tokens:
    raise ValueError(f"tokens file {path} names no client")
  return tokens


def parse_token_flags(flags: Sequence[str]) -> dict:
  """{token: client_id} from `CLIENT_ID=TOKEN` flags."""
  lines = []
  for flag in flags:
    client, sep, token = flag.partition("=")
    if not sep:
      raise ValueError(f"--token {flag!r} is not CLIENT_ID=TOKEN")
    lines.append(f"{client} {token}")
  return parse_tokens(lines, "--token")


class Authenticator:
  """Maps a call's metadata to the caller's client id.

  Args:
    tokens: {token: client_id}; None admits every caller as
      `LOCAL_CLIENT` (an --insecure-local server without tokens).
  """

  def __init__(self, tokens: Mapping[str, str] | None):
    if tokens is not None and not tokens:
      raise ValueError("give at least one client token, or None")
    self._tokens = (
      None
      if tokens is None
      else [(t.encode(), c) for t, c in sorted(tokens.items())]
    )

  @property
  def anonymous(self) -> bool:
    """True when no token is required."""
    return self._tokens is None

  def client_id(self, metadata: Iterable[tuple[str, str | bytes]]) -> str:
    """The caller's id.

    Raises:
      ProtocolError("unauthenticated"): no token or an unknown one (the
        same message for both).
    """
    if self._tokens is None:
      return LOCAL_CLIENT
    given = b""
    for key, value in metadata or ():
      if key == protocol.AUTH_KEY and isinstance(value, str):
        if value.startswith(protocol.AUTH_SCHEME):
          given = value[len(protocol.AUTH_SCHEME) :].encode()
    found = None
    for token, client in self._tokens:  # No early exit: constant time.
      if hmac.compare_digest(token, given) and given:
        found = client
    if found is None:
      raise protocol.ProtocolError(
        "unauthenticated", "a valid per-client token is required"
      )
    return found


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
  """The metadata a client sends with every call."""
  if token is None:
    return ()
  return ((protocol.AUTH_KEY, protocol.AUTH_SCHEME + token),)
