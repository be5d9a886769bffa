"""Per-client tokens: file parsing, bad files refused, metadata lookup."""

import pytest

from jaxexit.serve import auth, protocol

A, B = "a" * 20, "b" * 24


def test_parse_tokens_and_lookup(tmp_path):
  path = tmp_path / "tokens.txt"
  path.write_text(f"# clients\nedge-a {A}  # lab\n\nedge-b {B}\n")
  tokens = auth.read_tokens_file(str(path))
  assert tokens == {A: "edge-a", B: "edge-b"}
  a = auth.Authenticator(tokens)
  assert a.client_id(auth.call_metadata(A)) == "edge-a"
  assert a.client_id([("x", "y"), *auth.call_metadata(B)]) == "edge-b"
  for md in [(), auth.call_metadata(A[:-1]), [("authorization", A)]]:
    with pytest.raises(protocol.ProtocolError, match="unauthenticated"):
      a.client_id(md)
  assert not a.anonymous


@pytest.mark.parametrize(
  "text, message",
  [
    ("only-one-field\n", "CLIENT_ID TOKEN"),
    ("a short\n", "at least 16"),
    (f"a {A}\nb {A}\n", "repeat"),
    (f"a {A}\na {B}\n", "repeat"),
    ("# nothing\n", "names no client"),
  ],
)
def test_bad_token_files_are_refused(tmp_path, text, message):
  path = tmp_path / "tokens.txt"
  path.write_text(text)
  with pytest.raises(ValueError, match=message):
    auth.read_tokens_file(str(path))


def test_flags_and_anonymous_local():
  assert auth.parse_token_flags([f"x={A}"]) == {A: "x"}
  with pytest.raises(ValueError, match="CLIENT_ID=TOKEN"):
    auth.parse_token_flags([A])
  local = auth.Authenticator(None)
  assert local.anonymous and local.client_id(()) == auth.LOCAL_CLIENT
  with pytest.raises(ValueError):
    auth.Authenticator({})
