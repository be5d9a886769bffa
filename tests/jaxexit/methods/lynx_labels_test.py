"""LYNX events, features and forced-exit labels."""

import functools

import numpy as np
import pytest

from jaxexit.decoding.full import generate_full
from jaxexit.methods import lynx_conformal, lynx_labels
from jaxexit.methods.lynx_decode import generate_lynx
from tests.jaxexit.methods.lynx_decode_test import CUES, DECODE, _setup

EXIT_TEXT = "</think> Final Answer: \\boxed{"


def test_rollout_events_and_the_synthetic_event():
  pieces = ["so", " wa", "it", " ok", "."]
  assert lynx_labels.rollout_events(pieces) == ([2], False)
  plain = ["a"] * 10
  assert lynx_labels.rollout_events(plain) == ([7], True)
  assert lynx_labels.rollout_events(plain, synthetic=False) == ([], False)
  # A cue on the last token has nothing after it: no event.
  assert lynx_labels.rollout_events(["x", "hmm"], synthetic=False) == (
    [],
    False,
  )


def test_forced_labels_complete_the_truncated_prefix_and_match_online():
  model, probe, detector, cfg, prompts, lengths = _setup()
  prompt = prompts[0, : lengths[0]].tolist()
  trace = np.asarray(
    generate_full(
      model, prompts[:1], lengths[:1], max_new_tokens=cfg.max_reason
    )
  )[0].tolist()
  events, synthetic = lynx_labels.rollout_events(
    [DECODE(t) for t in trace], CUES
  )
  assert len(events) >= 3 and not synthetic
  decode = lambda ids: "".join(DECODE(i) for i in ids)  # noqa: E731
  # Batched with a second rollout (a row of padding-sensitive width): the
  # first rollout's completions must not depend on its batch mates.
  (labels, _), (texts, _) = lynx_labels.forced_exit_labels(
    model,
    [prompt, prompt[:2]],
    [trace, trace[:3]],
    [events, [1]],
    exit_ids=cfg.exit_ids,
    answer_len=cfg.answer_len,
    decode=decode,
    golds=["x", "y"],
    graders=["letter", "letter"],
    batch=2,
  )
  assert labels.shape == (len(events),)
  for e, text in zip(events, texts):
    ctx = np.asarray([prompt + trace[:e] + list(cfg.exit_ids)], np.int32)
    want = generate_full(
      model, ctx, np.array([ctx.shape[1]]), max_new_tokens=cfg.answer_len
    )
    assert text == decode(np.asarray(want)[0].tolist())  # the cue dropped
  # Online: a rule that exits at the first event answers what the forced
  # completion at that event says (up to the stop id).
  always = lynx_conformal.ConformalExit(-1.0, 1.0, 0.1, 10, 10)
  out = generate_lynx(
    model, probe, always, detector, prompts[:1], lengths[:1], cfg
  )
  e0 = int(out.exit_event[0])
  assert e0 == events[0]
  n_head = e0 + len(cfg.exit_ids)
  answer = np.asarray(out.tokens[0, n_head : int(out.length[0])]).tolist()
  assert decode(answer) == texts[0][: len(answer)]


def test_event_features_are_the_cue_positions():
  model, _, _, cfg, prompts, lengths = _setup()
  prompt = prompts[1, : lengths[1]].tolist()
  trace = [3, 4, 5, 6, 7]
  feats = lynx_labels.event_features(
    model, [prompt, prompt[:1]], [trace, trace[:2]], [[1, 3], [0]], (2, 4)
  )
  assert [f.shape for f in feats] == [(2, 32), (1, 32)]
  assert not np.allclose(feats[0][0], feats[0][1])
  # Padding after a row changes none of its features (one pass per row).
  alone = lynx_labels.event_features(model, [prompt], [trace], [[1, 3]], (2, 4))
  np.testing.assert_allclose(alone[0], feats[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prefix", ["So 3 + 4 = 7.", "x = 12\n", "wait"])
def test_exit_cue_boundary_on_smollm2(prefix):
  """The pre-tokenised cue equals re-tokenising the text after these
  prefixes (SmolLM2's BPE does not merge across "</think>")."""
  tok = _smollm2_tokenizer()
  diff = lynx_labels.exit_cue_boundary(tok.encode, [prefix], EXIT_TEXT)
  assert diff == [], diff


def test_exit_cue_boundary_reports_a_merge():
  """A prefix ending inside a word merges with the cue: reported."""
  encode = lambda s: s.split(" ")  # noqa: E731  (a toy 'tokenizer')
  assert lynx_labels.exit_cue_boundary(encode, ["ab"], "c d") == ["ab"]


@functools.cache
def _smollm2_tokenizer():
  from jaxexit.data.gguf_tokenizer import GGUFTokenizer
  from jaxexit.models.gguf_weights import smollm2_gguf_path

  return GGUFTokenizer.from_gguf(smollm2_gguf_path())
