"""Policy sampler: validity, logp == teacher-forced logp, greedy, vmap/grad."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxexit.exploratory_iteration import policy
from jaxexit.exploratory_iteration.domains import Knapsack, PermSort, SortChain
from jaxexit.models.llama import LlamaLM
from tests.tiers import heavy

TINY = policy.PolicyConfig(d_model=16, num_layers=1, num_heads=2, mlp_hidden=32)
DOMAINS = {
  "permsort": PermSort(n=5),
  "knapsack": Knapsack(n=5),
  "sortchain": SortChain(turns=2, per_turn=2),
}


def _setup(name, n=16):
  d = DOMAINS[name]
  model = policy.make_policy(d, TINY, nnx.Rngs(0))
  batch = jax.jit(d.sft_examples, static_argnums=1)(jax.random.key(1), n)
  return d, model, batch


@functools.partial(jax.jit, static_argnames=("graphdef", "d", "temperature"))
def _sample_and_score(graphdef, params, batch, key, *, d, temperature):
  """(response, sampler logp, teacher-forced logp)."""
  m = nnx.merge(graphdef, params)
  r, lp = policy.sample_responses(
    m, d, batch.tasks, batch.prev, batch.mode, key, temperature
  )
  return (
    r,
    lp,
    policy.response_logprobs(m, d, batch.tasks, batch.prev, batch.mode, r),
  )


@functools.partial(jax.jit, static_argnames=("graphdef", "d"))
def _response_logits(graphdef, params, batch, response, *, d):
  """Teacher-forced logits and masks of `response`."""
  prompt = d.build_prompt(batch.tasks, batch.prev, batch.mode)
  tokens = jnp.concatenate([prompt, response[:, :-1]], axis=1)
  logits = nnx.merge(graphdef, params)(tokens).logits
  return (
    logits[:, prompt.shape[1] - 1 :],
    d.response_masks(batch.tasks, batch.prev, batch.mode, response),
  )


@heavy
@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_sampler_logp_matches_teacher_forcing_and_is_valid(name):
  d, model, batch = _setup(name)
  graphdef, params = nnx.split(model)
  r, lp, lp_tf = _sample_and_score(
    graphdef, params, batch, jax.random.key(2), d=d, temperature=1.0
  )
  assert r.shape == lp.shape == (16, d.response_len)
  assert r.dtype == jnp.int32 and lp.dtype == jnp.float32
  np.testing.assert_allclose(lp, lp_tf, atol=1e-5)
  masks = d.response_masks(batch.tasks, batch.prev, batch.mode, r)
  assert bool(jnp.all(jnp.take_along_axis(masks, r[..., None], 2)))
  assert bool(jnp.all(lp <= 0))


@heavy
def test_greedy_is_deterministic_and_picks_the_masked_argmax():
  d, model, batch = _setup("permsort")
  graphdef, params = nnx.split(model)
  run = functools.partial(_sample_and_score, graphdef, params, batch, d=d)
  r0, lp0, _ = run(jax.random.key(3), temperature=0.0)
  r1, lp1, _ = run(jax.random.key(4), temperature=0.0)
  np.testing.assert_array_equal(r0, r1)
  np.testing.assert_array_equal(lp0, lp1)
  # Each greedy token is the most likely allowed one (teacher-forced).
  logits, masks = _response_logits(graphdef, params, batch, r0, d=d)
  best = jnp.argmax(jnp.where(masks, logits, -jnp.inf), axis=-1)
  np.testing.assert_array_equal(best, r0)
  # Sampling at temperature 1 depends on the key.
  ra, _, _ = run(jax.random.key(3), temperature=1.0)
  rb, _, _ = run(jax.random.key(4), temperature=1.0)
  assert not np.array_equal(ra, rb)


@heavy
def test_vmap_over_seeds_and_grad():
  d = DOMAINS["permsort"]
  graphdef = policy.policy_graphdef(d, TINY)
  keys = jax.random.split(jax.random.key(5), 2)
  params = jax.vmap(
    lambda k: nnx.state(policy.make_policy(d, TINY, nnx.Rngs(k)))
  )(keys)
  batch = jax.jit(d.sft_examples, static_argnums=1)(jax.random.key(6), 8)

  def sample(params, key):
    m = nnx.merge(graphdef, params)
    return policy.sample_responses(
      m, d, batch.tasks, batch.prev, batch.mode, key, 1.0
    )

  r, lp = jax.jit(jax.vmap(sample))(params, keys)
  assert r.shape == (2, 8, d.response_len)
  one = jax.tree.map(lambda x: x[1], params)
  r1, lp1 = jax.jit(sample)(one, keys[1])
  np.testing.assert_array_equal(r[1], r1)
  np.testing.assert_allclose(lp[1], lp1, atol=1e-5)

  def objective(params):
    m = nnx.merge(graphdef, params)
    return jnp.sum(
      policy.response_logprobs(m, d, batch.tasks, batch.prev, batch.mode, r1)
    )

  grads = jax.jit(jax.grad(objective))(one)
  norms = [float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads)]
  assert all(np.isfinite(norms)) and sum(norms) > 0


def test_policy_config_and_bad_input():
  d = DOMAINS["permsort"]
  model = nnx.eval_shape(
    lambda: policy.make_policy(d, policy.PolicyConfig(), nnx.Rngs(0))
  )
  assert isinstance(model, LlamaLM)
  assert model.cfg.vocab_size == d.vocab_size
  assert model.cfg.max_position == d.prompt_len + d.response_len
  assert (model.cfg.d_model, model.cfg.num_layers, model.cfg.num_heads) == (
    64,
    2,
    4,
  )
  n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model)))
  assert 80_000 < n_params < 120_000
  with pytest.raises(ValueError, match="PolicyConfig.num_layers"):
    policy.PolicyConfig(num_layers=0)
  tasks = d.sample_tasks(jax.random.key(0), 2)
  with pytest.raises(ValueError, match="temperature"):
    policy.sample_responses(
      policy.make_policy(d, TINY, nnx.Rngs(0)),
      d,
      tasks,
      d.blank_answer(tasks),
      jnp.zeros((2,), jnp.int32),
      jax.random.key(0),
      -1.0,
    )
