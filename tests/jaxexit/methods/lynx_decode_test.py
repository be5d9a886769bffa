"""LYNX online exits equal the offline replay, token for token and
decision for decision."""

import numpy as np
import pytest
from flax import nnx

from jaxexit.methods import lynx_conformal
from jaxexit.methods.lynx_cues import CueDetector
from jaxexit.methods.lynx_decode import LynxConfig, generate_lynx
from jaxexit.methods.lynx_replay import replay_lynx
from jaxexit.methods.lynx_probe import LynxProbe
from jaxexit.models.llama import LlamaConfig, LlamaLM

V = 12
DECODE = lambda i: "abcdefghijkl"[i]  # noqa: E731
CUES = ("gd", "ab")
LAYERS = (2, 4)  # a block output and the final norm (4 blocks)


def _setup():
  model = LlamaLM(
    LlamaConfig(
      vocab_size=V,
      d_model=16,
      num_layers=4,
      num_heads=4,
      num_kv_heads=2,
      mlp_hidden=32,
      max_position=128,
    ),
    rngs=nnx.Rngs(3),
  )
  probe = LynxProbe(16 * len(LAYERS), LAYERS, (8,), rngs=nnx.Rngs(4))
  detector = CueDetector.build(DECODE, V, CUES)
  cfg = LynxConfig(
    feature_layers=LAYERS,
    exit_ids=(9, 10),
    stop_ids=(11,),
    max_reason=24,
    answer_len=5,
    eos_id=8,
  )
  prompts = np.array([[1, 2, 3, 4], [5, 6, 0, 0], [7, 1, 3, 0]], np.int32)
  lengths = np.array([4, 2, 3], np.int32)
  return model, probe, detector, cfg, prompts, lengths


def _rule_between(p_values):
  """q0 in the widest gap of the replayed p̂ (away from float noise)."""
  p = np.sort(np.unique(np.round(p_values, 6)))
  gaps = np.diff(p)
  k = int(np.argmax(gaps[len(gaps) // 4 :])) + len(gaps) // 4
  q0 = float((p[k] + p[k + 1]) / 2)
  return lynx_conformal.ConformalExit(q0, 1.0, 0.1, 10, 10)


@pytest.mark.parametrize("exit_some", [True, False])
def test_online_equals_replay(exit_some):
  model, probe, detector, cfg, prompts, lengths = _setup()
  never = lynx_conformal.ConformalExit(2.0, 1.0, 0.1, 10, 10)
  probes = [
    replay_lynx(model, probe, never, DECODE, p[:n], cfg, cues=CUES)
    for p, n in zip(prompts, lengths)
  ]
  all_p = np.concatenate([r["p_hat"] for r in probes])
  assert len(all_p) >= 6, "the traces need cue events"
  rule = _rule_between(all_p) if exit_some else never
  out = generate_lynx(model, probe, rule, detector, prompts, lengths, cfg)
  exited = 0
  for b, (p, n) in enumerate(zip(prompts, lengths)):
    ref = replay_lynx(model, probe, rule, DECODE, p[:n], cfg, cues=CUES)
    length = int(out.length[b])
    assert np.asarray(out.tokens[b, :length]).tolist() == ref["tokens"], b
    assert int(out.exit_event[b]) == ref["exit_event"], b
    got_events = np.flatnonzero(np.asarray(out.events[b])).tolist()
    assert got_events == ref["events"], b
    np.testing.assert_allclose(
      np.asarray(out.p_hat[b])[got_events], ref["p_hat"], atol=1e-5
    )
    exited += ref["exit_event"] >= 0
  if exit_some:
    assert 0 < exited, "the rule should exit somewhere"
  else:
    assert exited == 0


def test_probe_of_other_layers_is_refused():
  model, _, detector, cfg, prompts, lengths = _setup()
  other = LynxProbe(32, (1, 4), (8,), rngs=nnx.Rngs(0))
  never = lynx_conformal.ConformalExit(2.0, 1.0, 0.1, 10, 10)
  with pytest.raises(ValueError, match="layers"):
    generate_lynx(model, other, never, detector, prompts, lengths, cfg)


def test_slot_refill_equals_replay_for_every_queued_problem():
  model, probe, detector, cfg, _, _ = _setup()
  prompts = np.array(
    [[1, 2, 3, 4], [5, 6, 0, 0], [7, 1, 3, 0], [2, 2, 0, 0], [3, 0, 0, 0]],
    np.int32,
  )
  lengths = np.array([4, 2, 3, 2, 1], np.int32)
  never = lynx_conformal.ConformalExit(2.0, 1.0, 0.1, 10, 10)
  probes = [
    replay_lynx(model, probe, never, DECODE, p[:n], cfg, cues=CUES)
    for p, n in zip(prompts, lengths)
  ]
  rule = _rule_between(np.concatenate([r["p_hat"] for r in probes]))
  out = generate_lynx(
    model, probe, rule, detector, prompts, lengths, cfg, slots=2
  )
  lengths_out = np.asarray(out.length)
  for b, (p, n) in enumerate(zip(prompts, lengths)):
    ref = replay_lynx(model, probe, rule, DECODE, p[:n], cfg, cues=CUES)
    got = np.asarray(out.tokens[b, : lengths_out[b]]).tolist()
    assert got == ref["tokens"], b
    assert int(out.exit_event[b]) == ref["exit_event"], b
  # Exits make rows finish at different times, which refill exploits.
  assert len(set(lengths_out.tolist())) > 1


def test_bad_lynx_settings_name_the_value():
  with pytest.raises(ValueError, match="exit_ids"):
    LynxConfig(
      feature_layers=(1,),
      exit_ids=(),
      stop_ids=(1,),
      max_reason=4,
      answer_len=2,
    )
  with pytest.raises(ValueError, match="answer_len"):
    LynxConfig(
      feature_layers=(1,),
      exit_ids=(3,),
      stop_ids=(1,),
      max_reason=4,
      answer_len=0,
    )
