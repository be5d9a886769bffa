"""K-step evaluation: shapes, a plain-loop reference, greedy determinism."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxexit.exploratory_iteration import policy
from jaxexit.exploratory_iteration.domains import (
  MODE_BASE,
  MODE_IMPROVE,
  PermSort,
  SortChain,
)
from jaxexit.exploratory_iteration.k_step import k_step, k_step_eval
from tests.tiers import heavy

TINY = policy.PolicyConfig(d_model=16, num_layers=1, num_heads=2, mlp_hidden=32)
DOMAIN = PermSort(n=5)


@functools.partial(
  jax.jit,
  static_argnames=("graphdef", "domain", "K", "num_samples", "temperature"),
)
def _k_step_reference(
  graphdef, params, tasks, key, *, domain, K, num_samples, temperature
):
  """A plain Python loop over the steps (samples tiled sample-major)."""
  model = nnx.merge(graphdef, params)
  b = domain.num_tasks(tasks)
  reps = jnp.tile(tasks, (num_samples, 1))
  prev = domain.blank_answer(reps)
  quality, success = [], []
  for k in range(K + 1):
    mode = jnp.full(
      (b * num_samples,), MODE_BASE if k == 0 else MODE_IMPROVE, jnp.int32
    )
    response, _ = policy.sample_responses(
      model, domain, reps, prev, mode, jax.random.fold_in(key, k), temperature
    )
    prev = domain.apply_response(reps, prev, mode, response)
    quality.append(domain.quality(reps, prev).reshape(num_samples, b))
    success.append(domain.success(reps, prev).reshape(num_samples, b))
  return jnp.stack(quality), jnp.stack(success)  # [K1, S, B]


@heavy
def test_shapes_and_net_corrections():
  model = policy.make_policy(DOMAIN, TINY, nnx.Rngs(0))
  tasks = DOMAIN.sample_tasks(jax.random.key(1), 6)
  r = k_step_eval(
    model,
    DOMAIN,
    tasks,
    K=2,
    num_samples=2,
    temperature=1.0,
    key=jax.random.key(2),
  )
  assert r.quality.shape == r.success.shape == (3,)
  assert r.net_corrections.shape == (3,)
  assert r.sample_quality.shape == r.sample_success.shape == (3, 2, 6)
  s = np.asarray(r.sample_success)
  np.testing.assert_allclose(
    r.quality, r.sample_quality.mean((1, 2)), rtol=1e-6
  )
  np.testing.assert_allclose(r.success, s.mean((1, 2)))
  np.testing.assert_array_equal(r.net_corrections, s.sum((1, 2)) - s[0].sum())
  assert int(r.net_corrections[0]) == 0
  q = np.asarray(r.sample_quality)
  assert np.all((q >= 0) & (q <= 1))


@heavy
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_matches_plain_loop_reference(temperature):
  model = policy.make_policy(DOMAIN, TINY, nnx.Rngs(3))
  tasks = DOMAIN.sample_tasks(jax.random.key(4), 6)
  key = jax.random.key(5)
  r = k_step_eval(
    model, DOMAIN, tasks, K=2, num_samples=2, temperature=temperature, key=key
  )
  graphdef, params = nnx.split(model)
  q, s = _k_step_reference(
    graphdef,
    params,
    tasks,
    key,
    domain=DOMAIN,
    K=2,
    num_samples=2,
    temperature=temperature,
  )
  np.testing.assert_allclose(r.sample_quality, q, rtol=1e-6)
  np.testing.assert_array_equal(r.sample_success, s)


@heavy
def test_greedy_is_bit_exact_and_key_independent():
  model = policy.make_policy(DOMAIN, TINY, nnx.Rngs(6))
  tasks = DOMAIN.sample_tasks(jax.random.key(7), 6)
  runs = [
    k_step_eval(
      model,
      DOMAIN,
      tasks,
      K=2,
      num_samples=2,
      temperature=0.0,
      key=jax.random.key(k),
    )
    for k in (0, 0, 1)
  ]
  for r in runs[1:]:
    for x, y in zip(jax.tree.leaves(runs[0]), jax.tree.leaves(r)):
      np.testing.assert_array_equal(x, y)
  # Greedy samples of one task are identical.
  np.testing.assert_array_equal(
    runs[0].sample_quality[:, 0], runs[0].sample_quality[:, 1]
  )


@heavy
def test_vmaps_over_seeds_and_serves_multi_turn_tasks():
  d = SortChain(turns=2, per_turn=2)
  graphdef = policy.policy_graphdef(d, TINY)
  keys = jax.random.split(jax.random.key(8), 2)
  params = jax.vmap(
    lambda k: nnx.state(policy.make_policy(d, TINY, nnx.Rngs(k)))
  )(keys)
  tasks = d.sample_tasks(jax.random.key(9), 4)

  def curve(params, key):
    return k_step(
      nnx.merge(graphdef, params),
      d,
      tasks,
      K=2,
      num_samples=1,
      temperature=1.0,
      key=key,
    )

  r = jax.jit(jax.vmap(curve))(params, keys)
  assert r.quality.shape == (2, 3)
  assert r.sample_quality.shape == (2, 3, 1, 4)
  one = k_step_eval(
    nnx.merge(graphdef, jax.tree.map(lambda x: x[0], params)),
    d,
    tasks,
    K=2,
    num_samples=1,
    temperature=1.0,
    key=keys[0],
  )
  np.testing.assert_allclose(r.sample_quality[0], one.sample_quality, rtol=1e-6)


def test_bad_input():
  model = policy.make_policy(DOMAIN, TINY, nnx.Rngs(0))
  tasks = DOMAIN.sample_tasks(jax.random.key(0), 2)
  with pytest.raises(ValueError, match="K"):
    k_step_eval(model, DOMAIN, tasks, K=-1, num_samples=1, temperature=0.0)
  with pytest.raises(ValueError, match="num_samples"):
    k_step_eval(model, DOMAIN, tasks, K=1, num_samples=0, temperature=0.0)
  with pytest.raises(ValueError, match="temperature"):
    k_step_eval(model, DOMAIN, tasks, K=1, num_samples=1, temperature=-1.0)
