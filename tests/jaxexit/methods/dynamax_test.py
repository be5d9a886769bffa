import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxexit import train as train_lib
from jaxexit.decoding.config import DecodeConfig
from jaxexit.decoding.engine import generate
from jaxexit.decoding.exit_heads import LMHeadExits
from jaxexit.decoding.full import generate_full
from jaxexit.methods import dynamax_train
from jaxexit.methods.dynamax import KINDS, ExitClassifierConfig, ExitClassifiers
from jaxexit.models.llama import LlamaConfig, LlamaLM
from tests.tiers import fast_only, heavy


def _backbone():
  cfg = LlamaConfig(
    vocab_size=32,
    d_model=16,
    num_layers=6,
    num_heads=4,
    num_kv_heads=2,
    mlp_hidden=32,
    max_position=64,
  )
  return LlamaLM(cfg, rngs=nnx.Rngs(0))


def _classifiers(kind, seed=1):
  cfg = ExitClassifierConfig(kind=kind, num_exits=2, d_model=16, mamba_width=8)
  return ExitClassifiers(cfg, rngs=nnx.Rngs(seed))


def _inputs(batch=2, length=7):
  h = jax.random.normal(jax.random.key(0), (batch, length, 16))
  positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
  return h, positions, jnp.ones((batch, length), bool)


@pytest.mark.parametrize("kind", fast_only(KINDS, "lm_head"))
def test_fresh_classifiers_start_as_the_shared_lm_head(kind):
  backbone, heads = _backbone(), _classifiers(kind)
  h, positions, valid = _inputs()
  state = heads.init_state(2, 2, 7)[1]
  logits, _ = heads(backbone, 1, h, state, positions, valid)
  base, _ = LMHeadExits()(backbone, 1, h, (), positions, valid)
  np.testing.assert_allclose(logits, base, atol=1e-6)


def _perturbed_mamba_heads():
  heads = _classifiers("mamba")
  up = heads.exits[0].up.kernel
  up[...] = jax.random.normal(jax.random.key(5), up[...].shape)
  return heads


@heavy
def test_mamba_classifier_is_causal_and_steps_like_the_sequence():
  backbone, heads = _backbone(), _perturbed_mamba_heads()
  h, positions, valid = _inputs()
  state0 = heads.init_state(2, 2, 7)[0]
  whole, _ = heads(backbone, 0, h, state0, positions, valid)
  state, steps = state0, []
  for t in range(7):
    logits, state = heads(
      backbone,
      0,
      h[:, t : t + 1],
      state,
      positions[:, t : t + 1],
      valid[:, t : t + 1],
    )
    steps.append(logits)
  np.testing.assert_allclose(jnp.concatenate(steps, 1), whole, atol=1e-4)
  # advance = the state half of a call; an invalid step leaves it alone.
  adv = heads.advance(backbone, 0, h, state0, positions, valid)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), adv, state
  )
  frozen = heads.advance(backbone, 0, h, state0, positions, ~valid)
  jax.tree.map(np.testing.assert_array_equal, frozen, state0)


@heavy
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["propagate", "recompute", "freeze"])
def test_exits_disabled_equals_full_model_with_trained_kinds(kind, mode):
  backbone = _backbone()
  heads = _perturbed_mamba_heads() if kind == "mamba" else _classifiers(kind)
  prompts = np.array([[3, 7, 1, 9, 4], [5, 8, 2, 0, 0]], np.int32)
  lengths = np.array([5, 3], np.int32)
  full = generate_full(backbone, prompts, lengths, max_new_tokens=6)
  cfg = DecodeConfig(
    exit_layers=(2, 4),
    state_mode=mode,
    exits_enabled=False,
    max_new_tokens=6,
    pending=2,
  )
  out = generate(backbone, heads, prompts, lengths, 0.0, cfg)
  np.testing.assert_array_equal(out.tokens, full)


@heavy
def test_training_lowers_the_loss_and_keeps_the_backbone(tmp_path):
  backbone = _backbone()
  before = jax.tree.map(np.asarray, nnx.state(backbone))
  tokens = np.tile(np.arange(12, dtype=np.int32), (16, 1)) % 5  # learnable
  feats = dynamax_train.exit_features(
    backbone, tokens, np.full(16, 12), (2, 4), batch_size=8, progress=False
  )
  assert feats.hidden.shape == (16, 12, 2, 16)
  assert not feats.mask[:, -1].any() and feats.mask[:, :-1].all()
  heads = _classifiers("mlp")
  model = dynamax_train.DynamaxTrainer(backbone, heads)
  batch = feats.batch(np.arange(8))
  batch = jax.tree.map(jnp.asarray, batch)
  loss0, _ = dynamax_train.dynamax_loss(model, batch, None)
  heads, metrics = dynamax_train.train_exit_classifiers(
    backbone,
    heads,
    feats,
    optim=train_lib.OptimConfig(learning_rate=3e-2),
    num_steps=30,
    batch_size=8,
    workdir=tmp_path,
    progress=False,
  )
  loss1, _ = dynamax_train.dynamax_loss(
    dynamax_train.DynamaxTrainer(backbone, heads), batch, None
  )
  assert float(loss1) < 0.9 * float(loss0)
  jax.tree.map(
    np.testing.assert_array_equal,
    before,
    jax.tree.map(np.asarray, nnx.state(backbone)),
  )


def test_bad_configs():
  with pytest.raises(ValueError, match="kind"):
    ExitClassifierConfig(kind="linear", num_exits=2, d_model=16)
  with pytest.raises(ValueError, match="num_exits"):
    ExitClassifierConfig(kind="mlp", num_exits=0, d_model=16)
  heads = _classifiers("mlp")
  with pytest.raises(ValueError, match="num_exits=2"):
    generate(
      _backbone(),
      heads,
      np.array([[1, 2]]),
      np.array([2]),
      0.5,
      DecodeConfig(exit_layers=(1, 2, 3), max_new_tokens=2),
    )
  with pytest.raises(ValueError, match="weights are all 0"):
    dynamax_train.DynamaxLossConfig(
      ce_weight=0.0, kl_weight=0.0, score_weight=0.0
    )
