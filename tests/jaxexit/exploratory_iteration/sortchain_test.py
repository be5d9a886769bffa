"""SortChain: turns, prompts, pointer validity, episodes and prefixes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxexit.exploratory_iteration.domains import (
  MODE_BASE,
  MODE_IMPROVE,
  SortChain,
  base,
  permsort,
  sortchain,
)
from tests.jaxexit.exploratory_iteration.permsort_test import random_responses
from tests.tiers import heavy


def _at_turn(d, key, n, turn):
  """Tasks at `turn` whose earlier iterates are random permutations."""
  tasks = d.sample_tasks(key, n)
  for u in range(turn):
    blank = d.blank_answer(tasks)
    mode = jnp.zeros((n,), jnp.int32)
    response = random_responses(
      d, tasks, blank, mode, jax.random.fold_in(key, 10 + u)
    )
    tasks = d.next_turn(tasks, d.apply_response(tasks, blank, mode, response))
  return tasks


@heavy
@pytest.mark.parametrize("turn", [0, 1, 2])
def test_responses_point_into_the_turn_source(turn):
  d = SortChain(turns=3, per_turn=3)
  key = jax.random.key(turn)
  tasks = _at_turn(d, key, 32, turn)
  np.testing.assert_array_equal(tasks.turn, turn)
  length = 3 * (turn + 1)
  for mode in (MODE_BASE, MODE_IMPROVE):
    modes = jnp.full((32,), mode, jnp.int32)
    source = d.base_source(tasks)
    prev = jax.random.permutation(
      jax.random.fold_in(key, 1), source[:, :length], axis=1, independent=True
    )
    prev = jnp.concatenate([prev, source[:, length:]], axis=1)
    response = random_responses(
      d, tasks, prev, modes, jax.random.fold_in(key, 2)
    )
    r = np.asarray(response)
    np.testing.assert_array_equal(r[:, length:], sortchain.PAD)
    np.testing.assert_array_equal(
      np.sort(r[:, :length] - sortchain.PTR_0, 1),
      np.broadcast_to(np.arange(length), (32, length)),
    )
    answer = np.asarray(d.apply_response(tasks, prev, modes, response))
    src = np.asarray(source if mode == MODE_BASE else prev)
    np.testing.assert_array_equal(
      np.sort(answer[:, :length], 1), np.sort(src[:, :length], 1)
    )
    np.testing.assert_array_equal(answer[:, length:], -1)
    q = d.quality(tasks, jnp.asarray(answer))
    np.testing.assert_allclose(
      q, permsort.sortedness(jnp.asarray(answer), jnp.full((32,), length))
    )


@heavy
def test_base_source_is_last_iterate_then_new_digits():
  d = SortChain(turns=3, per_turn=2)
  tasks = d.sample_tasks(jax.random.key(0), 4)
  iterate0 = jnp.flip(tasks.digits[:, :2], 1)
  tasks = d.next_turn(
    tasks, jnp.concatenate([iterate0, jnp.full((4, 4), -1, jnp.int32)], 1)
  )
  np.testing.assert_array_equal(
    d.base_source(tasks),
    jnp.concatenate(
      [iterate0, tasks.digits[:, 2:4], jnp.full((4, 2), -1, jnp.int32)], 1
    ),
  )


def test_prompt_shows_only_the_asked_turns():
  d = SortChain(turns=2, per_turn=2)
  tasks = d.sample_tasks(jax.random.key(1), 1)
  tasks = tasks._replace(digits=jnp.array([[3, 1, 4, 1]]))
  prompt = np.asarray(
    d.build_prompt(tasks, d.blank_answer(tasks), jnp.array([MODE_BASE]))
  )
  b, u = base, sortchain.USER
  assert prompt.shape == (1, d.prompt_len)
  np.testing.assert_array_equal(
    prompt[0],
    [b.BOS, u, 3, 1, b.SEP, b.BLANK, b.BLANK, u, b.BLANK, b.BLANK, b.SEP]
    + [b.BLANK] * 4
    + [b.SEP]
    + [b.BLANK] * 4
    + [b.MODE_TOKEN_0],
  )
  tasks = d.next_turn(tasks, jnp.array([[1, 3, -1, -1]]))
  prompt = np.asarray(
    d.build_prompt(tasks, jnp.array([[1, 1, 3, 4]]), jnp.array([MODE_IMPROVE]))
  )
  np.testing.assert_array_equal(
    prompt[0],
    [b.BOS, u, 3, 1, b.SEP, 1, 3, u, 4, 1, b.SEP]
    + [b.BLANK] * 4
    + [b.SEP, 1, 1, 3, 4, b.MODE_TOKEN_0 + 1],
  )


@heavy
def test_finish_episode_return_and_prefixes():
  d = SortChain(turns=3, per_turn=2)
  key = jax.random.key(2)
  tasks = d.sample_tasks(key, 8)
  respond = lambda t, p, m, k: random_responses(d, t, p, m, k)
  blank = d.blank_answer(tasks)
  mode = jnp.zeros((8,), jnp.int32)
  first = d.apply_response(tasks, blank, mode, respond(tasks, blank, mode, key))
  done = d.finish_episode(tasks, first, respond, jax.random.fold_in(key, 1))
  np.testing.assert_array_equal(done.turn, 3)
  np.testing.assert_array_equal(done.history[:, 0], first)
  hist = np.asarray(done.history)
  for u in range(3):
    assert np.all(hist[:, u, : 2 * (u + 1)] >= 0)
    assert np.all(hist[:, u, 2 * (u + 1) :] == -1)
  per_turn = [
    permsort.sortedness(done.history[:, u], jnp.full((8,), 2 * (u + 1)))
    for u in range(3)
  ]
  np.testing.assert_allclose(
    d.episode_return(done), np.mean(per_turn, axis=0), rtol=1e-6
  )
  # A finished episode is left alone by another turn.
  again = d.next_turn(done, first)
  np.testing.assert_array_equal(again.history, done.history)
  prefixes, prev, valid = d.turn_prefixes(done)
  assert prefixes.history.shape == (8, 3, 3, 6) and prev.shape == (8, 3, 6)
  np.testing.assert_array_equal(valid, True)
  np.testing.assert_array_equal(prefixes.turn[0], [0, 1, 2])
  np.testing.assert_array_equal(prev, done.history)
  np.testing.assert_array_equal(prefixes.history[:, 2, :2], hist[:, :2])
  np.testing.assert_array_equal(prefixes.history[:, 1, 1:], -1)
  # Prefix u with prev = its iterate is a valid self-iteration start.
  flat = jax.tree.map(lambda x: x[:, 1], prefixes)
  np.testing.assert_allclose(d.quality(flat, prev[:, 1]), per_turn[1])
  _, _, valid = d.turn_prefixes(tasks._replace(turn=jnp.full((8,), 1)))
  np.testing.assert_array_equal(valid[0], [True, False, False])


@heavy
def test_sft_examples_are_valid():
  d = SortChain()
  batch = jax.jit(d.sft_examples, static_argnums=1)(jax.random.key(3), 256)
  masks = d.response_masks(batch.tasks, batch.prev, batch.mode, batch.target)
  assert bool(jnp.all(jnp.take_along_axis(masks, batch.target[..., None], 2)))
  assert set(np.unique(batch.tasks.turn)) == {0, 1, 2}
  answer = d.apply_response(batch.tasks, batch.prev, batch.mode, batch.target)
  length = np.asarray(d.length(batch.tasks))
  src = np.where(
    (np.asarray(batch.mode) == MODE_BASE)[:, None],
    np.asarray(d.base_source(batch.tasks)),
    np.asarray(batch.prev),
  )
  a = np.asarray(answer)
  for i in range(256):
    np.testing.assert_array_equal(
      np.sort(a[i, : length[i]]), np.sort(src[i, : length[i]])
    )
  hist = np.asarray(batch.tasks.history)
  turn = np.asarray(batch.tasks.turn)
  for i in range(256):
    for u in range(3):
      assert np.all(hist[i, u, : 3 * (u + 1)] >= 0) == (u < turn[i])


def test_bad_input():
  with pytest.raises(ValueError, match="SortChain.per_turn"):
    SortChain(per_turn=1)
  with pytest.raises(ValueError, match="SortChain.turns"):
    SortChain(turns=0)
