"""Knapsack: OPT and the verifier vs brute force, warm-start data."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxexit.exploratory_iteration.domains import (
  MODE_BASE,
  MODE_DIVERGE,
  MODE_IMPROVE,
  Knapsack,
  KnapsackTasks,
  base,
  knapsack,
)
from tests.tiers import slow


def _brute_opt(w, v, cap):
  best = 0
  for bits in itertools.product([0, 1], repeat=len(w)):
    bits = np.array(bits)
    if bits @ w <= cap:
      best = max(best, int(bits @ v))
  return best


def test_opt_matches_brute_force():
  d = Knapsack(n=8)
  tasks = d.sample_tasks(jax.random.key(0), 12)
  w, v = np.asarray(tasks.weights), np.asarray(tasks.values)
  np.testing.assert_array_equal(tasks.capacity, w.sum(1) // 2)
  assert w.min() >= 1 and w.max() <= 9 and v.min() >= 1 and v.max() <= 9
  np.testing.assert_array_equal(
    tasks.opt,
    [_brute_opt(*args) for args in zip(w, v, np.asarray(tasks.capacity))],
  )


def test_quality_and_success():
  tasks = KnapsackTasks(
    weights=jnp.array([[4, 3, 2, 1]]),
    values=jnp.array([[5, 4, 3, 1]]),
    capacity=jnp.array([5]),
    opt=jnp.array([8]),
  )
  d = Knapsack(n=4)
  answers = jnp.array(
    [[0, 1, 1, 0], [1, 0, 0, 1], [1, 1, 0, 0], [0, 0, 1, 1], [-1, -1, -1, -1]]
  )
  t = jax.tree.map(lambda x: jnp.repeat(x, 5, axis=0), tasks)
  np.testing.assert_allclose(
    d.quality(t, answers), [7 / 8, 6 / 8, 0.0, 4 / 8, 0.0], rtol=1e-6
  )
  np.testing.assert_array_equal(
    d.success(t, answers), [False, False, False, False, False]
  )
  best = jnp.array([[1, 0, 0, 1]])
  tasks = tasks._replace(opt=jnp.array([6]))
  np.testing.assert_array_equal(d.success(tasks, best), [True])


def test_noisy_greedy_without_noise_is_greedy_by_ratio():
  d = Knapsack(n=6)
  tasks = d.sample_tasks(jax.random.key(1), 16)
  got = np.asarray(knapsack.noisy_greedy(jax.random.key(2), tasks, 0.0))
  for i in range(16):
    w = np.asarray(tasks.weights[i])
    v = np.asarray(tasks.values[i])
    room, want = int(tasks.capacity[i]), np.zeros(6, np.int32)
    for j in np.argsort(-(v / w), kind="stable"):
      if w[j] <= room:
        want[j], room = 1, room - w[j]
    np.testing.assert_array_equal(got[i], want)


def test_local_moves_and_prompt():
  flips = knapsack.local_moves(5)
  assert flips.shape == (5 + 10, 5)
  np.testing.assert_array_equal(flips.sum(1), [1] * 5 + [2] * 10)
  d = Knapsack(n=3)
  tasks = KnapsackTasks(
    weights=jnp.array([[1, 9, 4]]),
    values=jnp.array([[2, 3, 7]]),
    capacity=jnp.array([7]),
    opt=jnp.array([9]),
  )
  prompt = d.build_prompt(
    tasks, jnp.array([[1, 0, 1]]), jnp.array([MODE_IMPROVE])
  )
  b0, b1 = knapsack.BIT_0, knapsack.BIT_0 + 1
  np.testing.assert_array_equal(
    prompt[0],
    [
      base.BOS,
      1,
      2,
      9,
      3,
      4,
      7,
      base.SEP,
      0,
      7,
      base.SEP,
      b1,
      b0,
      b1,
      base.MODE_TOKEN_0 + 1,
    ],
  )
  assert prompt.shape == (1, d.prompt_len)


def test_bit_responses_and_masks():
  d = Knapsack(n=5)
  tasks = d.sample_tasks(jax.random.key(3), 4)
  mode = jnp.zeros((4,), jnp.int32)
  response = knapsack.BIT_0 + jax.random.randint(
    jax.random.key(4), (4, 5), 0, 2
  )
  masks = d.response_masks(tasks, d.blank_answer(tasks), mode, response)
  assert masks.shape == (4, 5, d.vocab_size)
  np.testing.assert_array_equal(masks.sum(-1), 2)
  np.testing.assert_array_equal(
    d.apply_response(tasks, d.blank_answer(tasks), mode, response),
    response - knapsack.BIT_0,
  )
  np.testing.assert_array_equal(
    d.embed(response - knapsack.BIT_0), response - knapsack.BIT_0
  )


@slow
def test_sft_examples_follow_the_mix():
  d = Knapsack(n=6, improve_random_share=0.0)
  batch = jax.jit(d.sft_examples, static_argnums=1)(jax.random.key(5), 256)
  mode = np.asarray(batch.mode)
  assert set(np.unique(mode)) == {MODE_BASE, MODE_IMPROVE, MODE_DIVERGE}
  np.testing.assert_array_equal(np.asarray(batch.prev)[mode == MODE_BASE], -1)
  answer = d.apply_response(batch.tasks, batch.prev, batch.mode, batch.target)
  q_new = np.asarray(d.quality(batch.tasks, answer))
  q_prev = np.asarray(d.quality(batch.tasks, batch.prev))
  base_rows = mode == MODE_BASE
  assert np.all(q_new[base_rows] > 0)  # Greedy sets always fit.
  imp = mode == MODE_IMPROVE
  assert np.all(q_new[imp] >= q_prev[imp])
  div = mode == MODE_DIVERGE
  diff = np.any(np.asarray(answer) != np.asarray(batch.prev), axis=1)
  assert np.all(diff[div]) and np.all(q_new[div] > 0)
  # q >= q_prev - slack, or (when no other set reaches it) the best other.
  masks = knapsack.all_masks(6)
  w, v = np.asarray(batch.tasks.weights), np.asarray(batch.tasks.values)
  cap, opt = np.asarray(batch.tasks.capacity), np.asarray(batch.tasks.opt)
  prev = np.asarray(batch.prev)
  for i in np.flatnonzero(div):
    other = np.any(masks != prev[i], axis=1) & (masks @ w[i] <= cap[i])
    q_other = np.where(other, masks @ v[i] / opt[i], -1.0)
    floor = q_prev[i] - knapsack.DIVERGE_SLACK
    if np.any(q_other >= floor - 1e-6):
      assert q_new[i] >= floor - 1e-6
    else:
      np.testing.assert_allclose(q_new[i], q_other.max(), rtol=1e-6)
  masks = d.response_masks(batch.tasks, batch.prev, batch.mode, batch.target)
  assert bool(jnp.all(jnp.take_along_axis(masks, batch.target[..., None], 2)))


def test_bad_input():
  with pytest.raises(ValueError, match="Knapsack.n"):
    Knapsack(n=17)
  with pytest.raises(ValueError, match="Knapsack.n"):
    Knapsack(n=1)
  with pytest.raises(ValueError, match="greedy_noise"):
    Knapsack(greedy_noise=-1.0)
  with pytest.raises(ValueError, match="n must be"):
    Knapsack(n=4).sample_tasks(jax.random.key(0), 0)
