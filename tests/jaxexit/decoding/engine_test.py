import jax
import numpy as np
import pytest

from jaxexit import exits
from jaxexit.decoding import config as config_lib
from jaxexit.decoding.config import DecodeConfig
from jaxexit.decoding.cost import decode_costs, decode_flops_fraction
from jaxexit.decoding.engine import cache_length, generate
from jaxexit.decoding.exit_heads import LMHeadExits
from jaxexit.decoding.full import generate_full
from jaxexit.decoding.rules import resolve_rule
from jaxexit.decoding.simulate import simulate_exits
from jaxexit.methods.dynamax import ExitClassifierConfig, ExitClassifiers
from flax import nnx

from jaxexit.models.llama import LlamaConfig, LlamaLM
from jaxexit.models.mamba import MambaConfig, MambaLM
from jaxexit.models.mamba2 import Mamba2Config, Mamba2LM

from tests.tiers import fast_only, heavy, slow

N = 10
BACKBONES = {
  "llama": lambda: LlamaLM(
    LlamaConfig(
      vocab_size=32,
      d_model=16,
      num_layers=6,
      num_heads=4,
      num_kv_heads=2,
      mlp_hidden=32,
      max_position=64,
    ),
    rngs=nnx.Rngs(0),
  ),
  "mamba": lambda: MambaLM(
    MambaConfig(vocab_size=32, d_model=16, num_layers=6, d_state=4),
    rngs=nnx.Rngs(0),
  ),
  "mamba2": lambda: Mamba2LM(
    Mamba2Config(
      vocab_size=32,
      d_model=16,
      num_layers=6,
      d_state=4,
      num_heads=4,
      head_dim=8,
      n_groups=2,
      chunk_size=4,
    ),
    rngs=nnx.Rngs(0),
  ),
}


# The fast tier decodes a tiny llama; mamba and mamba2 (~3x the compile
# time) and the other state modes run in the heavy tier (--heavy).
KINDS = fast_only(BACKBONES, "llama")
MODES = fast_only(config_lib.STATE_MODES, "propagate")


def _prompts():
  prompts = np.array([[3, 7, 1, 9, 4, 2], [5, 8, 2, 0, 0, 0]], np.int32)
  return prompts, np.array([6, 3], np.int32)


def _model(kind):
  return BACKBONES[kind]()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES)
def test_exits_disabled_equals_full_model(kind, mode):
  model = _model(kind)
  prompts, lengths = _prompts()
  full = generate_full(model, prompts, lengths, max_new_tokens=N)
  cfg = DecodeConfig(
    exit_layers=(2, 4),
    state_mode=mode,
    exits_enabled=False,
    max_new_tokens=N,
    pending=3,
  )
  out = generate(model, LMHeadExits(), prompts, lengths, 0.0, cfg)
  np.testing.assert_array_equal(out.tokens, full)
  assert (np.asarray(out.exit_layer) == 6).all()


@heavy
@pytest.mark.parametrize("kind", BACKBONES)
def test_exits_disabled_sampling_equals_full_model(kind):
  model = _model(kind)
  prompts, lengths = _prompts()
  key = jax.random.key(3)
  full = generate_full(
    model, prompts, lengths, max_new_tokens=N, temperature=0.7, key=key
  )
  cfg = DecodeConfig(
    exit_layers=(3,), exits_enabled=False, max_new_tokens=N, temperature=0.7
  )
  out = generate(model, LMHeadExits(), prompts, lengths, 0.5, cfg, key=key)
  np.testing.assert_array_equal(out.tokens, full)


def _sequence(prompts, lengths, generated):
  rows = [
    np.concatenate([p[:n], g])
    for p, n, g in zip(prompts, lengths, np.asarray(generated))
  ]
  return np.stack(rows)


def _patience(threshold):
  del threshold  # PABEE: two consecutive exits agree
  return exits.patience_rule(1)


def _mamba_classifiers():
  """DYNAMAX's stateful Mamba exit classifiers with scores, perturbed off
  the shared LM head so their logits differ from it."""
  heads = ExitClassifiers(
    ExitClassifierConfig(kind="mamba", num_exits=3, d_model=16, mamba_width=8),
    rngs=nnx.Rngs(1),
  )
  for i, e in enumerate(heads.exits):
    e.up.kernel[...] = jax.random.normal(
      jax.random.key(5 + i), e.up.kernel[...].shape
    )
  return heads


# name: (DecodeConfig.rule, exit heads). Named rules, a factory of a
# stateful encoder rule, and a rule that reads only the heads' score (the
# projection then runs at the exit taken alone, through a stateful head).
RULE_CASES = {
  "max_softmax": ("max_softmax", LMHeadExits),
  "margin": ("margin", LMHeadExits),
  "cosine": ("cosine", LMHeadExits),
  "patience": (_patience, LMHeadExits),
  "learned": ("learned", _mamba_classifiers),
}


# The rule-agreement test (issue 19): every rule on Llama in CI (the slow
# tier), the Mamba backbones in the heavy tier.
@pytest.mark.parametrize(
  "kind, rule",
  [
    pytest.param("llama", "max_softmax", marks=slow),
    pytest.param("llama", "margin", marks=slow),
    pytest.param("llama", "cosine", marks=slow),
    pytest.param("llama", "patience", marks=slow),
    pytest.param("llama", "learned", marks=slow),
    pytest.param("mamba", "max_softmax", marks=heavy),
    pytest.param("mamba2", "margin", marks=heavy),
  ],
)
def test_oracle_equals_simulated_evaluation(kind, rule):
  model = _model(kind)
  spec, make_heads = RULE_CASES[rule]
  heads = make_heads()
  prompts, lengths = _prompts()
  prompts, lengths = prompts[:1], lengths[:1]  # batch 1: per-token exits
  cfg = DecodeConfig(
    exit_layers=(1, 2, 4), rule=spec, state_mode="oracle", max_new_tokens=N
  )
  # A threshold inside the first exit's confidence range mixes the exits.
  probe = simulate_exits(model, heads, prompts, lengths, 1.0, cfg)
  threshold = float(np.median(probe.exit_confidence[0, : lengths[0], 0]))
  out = generate(model, heads, prompts, lengths, threshold, cfg)
  seq = _sequence(prompts, lengths, out.tokens)
  sim = simulate_exits(
    model, heads, seq, np.array([seq.shape[1]]), threshold, cfg
  )
  start = lengths[0]
  # Token n+1 is predicted at position start + n; token 0 by the prefill.
  np.testing.assert_array_equal(
    out.tokens[0, 1:], sim.prediction[0, start : start + N - 1]
  )
  np.testing.assert_array_equal(
    out.exit_layer[0, 1:], sim.exit_layer[0, start : start + N - 1]
  )
  exit_layer = np.asarray(out.exit_layer[0, 1:])
  assert len(set(exit_layer.tolist())) > 1, f"no mix of exits: {exit_layer}"
  # Every exit's prediction is kept: the chosen one and the final one.
  bounds = np.array([1, 2, 4, 6])
  index = np.searchsorted(bounds, np.asarray(sim.exit_layer))
  picked = np.take_along_axis(sim.exit_prediction, index[..., None], -1)
  np.testing.assert_array_equal(picked[..., 0], sim.prediction)
  np.testing.assert_array_equal(
    sim.exit_prediction[..., -1], sim.full_prediction
  )
  # The vocabulary projection runs at every exit only for rules that read
  # logits; otherwise once, at the exit taken (none at the final layer).
  projections = np.asarray(out.exit_projections[0, 1:])
  if "logits" in resolve_rule(spec, threshold).reads:
    assert (projections == 3).all(), projections  # oracle: every exit
  else:
    np.testing.assert_array_equal(projections, exit_layer < 6)


@heavy
@pytest.mark.parametrize("kind", BACKBONES)
def test_recompute_is_exact_like_oracle(kind):
  # Catch-up gives deep blocks the exact states, so every decision matches
  # the oracle cache when the buffer never overflows.
  model = _model(kind)
  prompts, lengths = _prompts()
  prompts, lengths = prompts[:1], lengths[:1]
  outs = {}
  for mode in ("oracle", "recompute"):
    cfg = DecodeConfig(
      exit_layers=(1, 2, 4), state_mode=mode, max_new_tokens=N, pending=N
    )
    outs[mode] = generate(model, LMHeadExits(), prompts, lengths, 0.3, cfg)
  np.testing.assert_array_equal(outs["recompute"].tokens, outs["oracle"].tokens)
  np.testing.assert_array_equal(
    outs["recompute"].exit_layer, outs["oracle"].exit_layer
  )
  # Recompute did real skipping: fewer block applications than 6 per token
  # for early tokens, with the catch-up charged to later deep tokens.
  assert outs["recompute"].layers_computed[0, 1:].sum() < 6 * (N - 1) * 2


@heavy
@pytest.mark.parametrize("kind", BACKBONES)
def test_recompute_buffer_overflow_forces_full_pass(kind):
  model = _model(kind)
  prompts, lengths = _prompts()
  cfg = DecodeConfig(
    exit_layers=(1,), state_mode="recompute", max_new_tokens=N, pending=2
  )
  out = generate(model, LMHeadExits(), prompts[:1], lengths[:1], 0.0, cfg)
  layers = np.asarray(out.exit_layer[0, 1:])
  # λ = 0: every token would exit at block 1; every third one is forced deep.
  assert layers.tolist() == [1, 1, 6] * 3


@pytest.mark.parametrize(
  "mode", fast_only(["propagate", "freeze"], "propagate")
)
def test_threshold_zero_exits_at_first_exit(mode):
  model = _model("llama")
  prompts, lengths = _prompts()
  cfg = DecodeConfig(exit_layers=(2, 4), state_mode=mode, max_new_tokens=N)
  out = generate(model, LMHeadExits(), prompts, lengths, 0.0, cfg)
  assert (np.asarray(out.exit_layer[:, 1:]) == 2).all()
  assert (np.asarray(out.layers_computed[:, 1:]) == 2).all()
  expected = 4 if mode == "propagate" else 0
  assert (np.asarray(out.layers_propagated[:, 1:]) == expected).all()


@heavy
def test_batch_synchronous_rule_exits_together():
  model = _model("llama")
  prompts, lengths = _prompts()
  cfg = DecodeConfig(exit_layers=(1, 2, 4), max_new_tokens=N)
  out = generate(model, LMHeadExits(), prompts, lengths, 0.3, cfg)
  layers = np.asarray(out.exit_layer)
  np.testing.assert_array_equal(layers[0], layers[1])


@heavy
def test_eos_stops_rows():
  model = _model("llama")
  prompts, lengths = _prompts()
  full = np.asarray(generate_full(model, prompts, lengths, max_new_tokens=N))
  eos = int(full[0, 2])
  cfg = DecodeConfig(
    exit_layers=(3,), exits_enabled=False, max_new_tokens=N, eos_id=eos
  )
  out = generate(model, LMHeadExits(), prompts, lengths, 1.0, cfg)
  first = list(full[0]).index(eos)
  assert (np.asarray(out.tokens[0, first:]) == eos).all()
  assert not np.asarray(out.valid[0, first + 1 :]).any()
  np.testing.assert_array_equal(
    out.tokens,
    generate_full(model, prompts, lengths, max_new_tokens=N, eos_id=eos),
  )


def test_bad_input_errors():
  model = _model("llama")
  prompts, lengths = _prompts()
  cfg = DecodeConfig(exit_layers=(2,), max_new_tokens=N)
  with pytest.raises(ValueError, match="threshold"):
    generate(model, LMHeadExits(), prompts, lengths, 1.5, cfg)
  with pytest.raises(ValueError, match="max_len=8"):
    generate(model, LMHeadExits(), prompts, lengths, 0.5, cfg, max_len=8)
  with pytest.raises(ValueError, match="exit_layers"):
    generate(
      model,
      LMHeadExits(),
      prompts,
      lengths,
      0.5,
      DecodeConfig(exit_layers=(6,), max_new_tokens=N),
    )
  with pytest.raises(ValueError, match="state_mode"):
    DecodeConfig(exit_layers=(2,), state_mode="skip")
  with pytest.raises(ValueError, match="exit_layers"):
    DecodeConfig(exit_layers=(3, 2))

  for rule, match in [
    ("learned", "needs exit heads with a `score` method; LMHeadExits"),
    (exits.q_exit_rule(0.5), r"fields \['halt'\], which early-exit decoding"),
    (lambda t: 0.5, "returned float, not an ExitRule"),
  ]:
    with pytest.raises(ValueError, match=match):
      generate(
        model,
        LMHeadExits(),
        prompts,
        lengths,
        0.5,
        DecodeConfig(exit_layers=(2,), rule=rule),
      )
  with pytest.raises(ValueError, match="rule must be one of"):
    DecodeConfig(exit_layers=(2,), rule="sometimes")

  model.state_modes = ("oracle", "propagate")  # a backbone that cannot freeze
  with pytest.raises(ValueError, match="'freeze' is not supported by LlamaLM"):
    generate(
      model,
      LMHeadExits(),
      prompts,
      lengths,
      0.5,
      DecodeConfig(exit_layers=(2,), state_mode="freeze"),
    )


@heavy
def test_flops_fraction_counts_heads_and_skipping():
  model = _model("llama")
  prompts, lengths = _prompts()
  heads = LMHeadExits()
  full_cfg = DecodeConfig(
    exit_layers=(2, 4), exits_enabled=False, max_new_tokens=N
  )
  costs = decode_costs(
    model, heads, full_cfg.boundaries(6), cache_length(prompts.shape[1], N)
  )
  assert costs.block.min() > 0 and costs.head.min() > 0
  blocks = costs.in_blocks()
  assert blocks["head"][0] == pytest.approx(costs.head[0] / costs.block.mean())
  assert blocks["score"] == [0.0, 0.0]  # the shared head has no score
  full = generate(model, heads, prompts, lengths, 0.0, full_cfg)
  assert decode_flops_fraction(full, costs) == pytest.approx(1.0)
  cfg = DecodeConfig(exit_layers=(2, 4), state_mode="freeze", max_new_tokens=N)
  early = generate(model, heads, prompts, lengths, 0.0, cfg)
  expected = (2 * costs.block.mean() + costs.head[0]) / costs.full
  assert decode_flops_fraction(early, costs) == pytest.approx(expected)
