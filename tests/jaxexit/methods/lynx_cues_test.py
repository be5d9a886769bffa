"""LYNX cue events: the on-device detector equals the reference on real
tokenizers (SmolLM2's byte-level BPE and a byte tokenizer)."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest

from jaxexit.data.text import ByteTokenizer
from jaxexit.methods.lynx_cues import CueDetector, reference_events

TRACES = [
  "Let me compute 12 * 7 = 84. Wait, that is right. Hmm, so the answer is 84.",
  "WAIT... hmmm. Alternatively we could await the result; waiting is fine.",
  "no cue here at all, just arithmetic: 3 + 4 = 7",
  "HmmHmm wait,wait Alternatively,ALTERNATIVELY hmm",
  "wa it is split; w a i t too; h m m; but 'await' counts",
  "Unicode: café – naïve – 数学 – wait – 😀 hmm",
]


def test_reference_semantics_on_hand_made_pieces():
  # "wa" + "it" spans two tokens: the event is the token holding the "t".
  assert reference_events(["so ", "wa", "it", "!"]) == [2]
  # Case-insensitive, substring ("await"), one event per token.
  assert reference_events(["A", "WAIT", "await"]) == [1, 2]
  assert reference_events(["hmmm", " hm", "m"]) == [0, 2]
  assert reference_events(["nothing"]) == []
  assert reference_events(["x", "", "wa", "", "it"], cues=("wait",)) == [4]


@functools.cache
def _smollm2():
  from jaxexit.data.gguf_tokenizer import GGUFTokenizer
  from jaxexit.models.gguf_weights import smollm2_gguf_path

  tok = GGUFTokenizer.from_gguf(smollm2_gguf_path())
  decode = lambda i: tok.decode([i])
  return tok.encode, decode, CueDetector.build(decode, tok.vocab_size)


@functools.cache
def _bytes():
  tok = ByteTokenizer()
  decode = lambda i: tok.decode([i])
  return tok.encode, decode, CueDetector.build(decode, tok.vocab_size)


@pytest.mark.parametrize("tokenizer", ["smollm2", "bytes"])
def test_detector_equals_the_reference(tokenizer):
  encode, decode, detector = (_smollm2 if tokenizer == "smollm2" else _bytes)()
  rows = [encode(t) for t in TRACES]
  width = max(len(r) for r in rows)
  # Pad with a token whose piece holds no cue letter (the detector's events
  # past a row's end are ignored below).
  tokens = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    tokens[i, : len(r)] = r
  got = np.asarray(detector.events(jnp.asarray(tokens)))
  total = 0
  for i, r in enumerate(rows):
    want = reference_events([decode(t) for t in r])
    assert np.flatnonzero(got[i, : len(r)]).tolist() == want, TRACES[i]
    total += len(want)
  assert total >= 10  # the traces do exercise the detector


def test_custom_cues_and_bad_input():
  _, decode, _ = _bytes()
  detector = CueDetector.build(decode, 258, cues=("so the answer",))
  ids = jnp.asarray([list(b"and So The Answer is")], jnp.int32)
  events = np.flatnonzero(np.asarray(detector.events(ids))[0]).tolist()
  assert events == [len("and So The Answer") - 1]
  with pytest.raises(ValueError, match="cues"):
    CueDetector.build(decode, 258, cues=())
  with pytest.raises(ValueError, match="cues"):
    CueDetector.build(decode, 258, cues=("",))
