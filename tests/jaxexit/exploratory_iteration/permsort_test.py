"""PermSort: verifier vs brute force, pointer validity, warm-start data."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxexit.exploratory_iteration.domains import (
  MODE_BASE,
  MODE_DIVERGE,
  MODE_IMPROVE,
  PermSort,
  base,
  make_domain,
  permsort,
)
from tests.tiers import heavy


@functools.partial(jax.jit, static_argnums=0)
def random_responses(domain, tasks, prev, mode, key):
  """Responses drawn uniformly among the tokens each step mask allows."""
  b = mode.shape[0]
  response = jnp.zeros((b, domain.response_len), jnp.int32)
  for t in range(domain.response_len):
    allowed = domain.step_mask(tasks, prev, mode, response, t)
    logits = jnp.where(allowed, 0.0, -jnp.inf)
    token = jax.random.categorical(jax.random.fold_in(key, t), logits)
    response = response.at[:, t].set(token.astype(jnp.int32))
  return response


def _inversions_brute(row, length):
  return sum(
    row[i] > row[j] for i, j in itertools.combinations(range(length), 2)
  )


def test_inversions_and_quality_match_brute_force():
  rng = np.random.default_rng(0)
  values = rng.integers(0, 10, (64, 7)).astype(np.int32)
  length = rng.integers(2, 8, 64).astype(np.int32)
  got = permsort.inversions(jnp.asarray(values), jnp.asarray(length))
  want = [_inversions_brute(v, n) for v, n in zip(values, length)]
  np.testing.assert_array_equal(got, want)
  q = permsort.sortedness(jnp.asarray(values), jnp.asarray(length))
  np.testing.assert_allclose(
    q, 1 - np.array(want) / (length * (length - 1) / 2), rtol=1e-6
  )


def test_quality_success_and_blank():
  d = PermSort(n=5)
  x = jnp.array([[3, 1, 2, 2, 0], [0, 1, 1, 4, 9], [9, 7, 5, 3, 1]])
  answers = jnp.concatenate([jnp.sort(x[:1], axis=1), x[1:]], axis=0)
  np.testing.assert_allclose(d.quality(x, answers), [1.0, 1.0, 0.0])
  np.testing.assert_array_equal(d.success(x, answers), [True, True, False])
  blank = d.blank_answer(x)
  np.testing.assert_array_equal(d.quality(x, blank), 0.0)
  np.testing.assert_array_equal(d.success(x, blank), False)


def test_odd_even_passes_sort_in_n_passes_like_a_python_network():
  rng = np.random.default_rng(1)
  x = rng.integers(0, 10, (32, 6)).astype(np.int32)
  length = np.full(32, 6, np.int32)
  parity = rng.integers(0, 2, 32).astype(np.int32)
  src = permsort.odd_even_pass(
    jnp.asarray(x), jnp.asarray(parity), jnp.asarray(length)
  )
  got = np.take_along_axis(x, np.asarray(src), axis=1)
  for row, p, out in zip(x, parity, got):
    want = row.copy()
    for i in range(p, 5, 2):
      if want[i] > want[i + 1]:
        want[i], want[i + 1] = want[i + 1], want[i]
    np.testing.assert_array_equal(out, want)
  order = permsort.passes_order(
    jnp.asarray(x),
    jnp.asarray(length),
    jnp.asarray(parity),
    jnp.asarray(length),
    6,
  )
  np.testing.assert_array_equal(
    np.take_along_axis(x, np.asarray(order), axis=1), np.sort(x, axis=1)
  )


@heavy
@pytest.mark.parametrize("mode", [MODE_BASE, MODE_IMPROVE, MODE_DIVERGE])
def test_pointer_responses_are_permutations_of_the_source(mode):
  d = PermSort(n=6)
  key = jax.random.key(2)
  x = d.sample_tasks(key, 64)
  prev = jax.random.permutation(
    jax.random.fold_in(key, 1), x, axis=1, independent=True
  )
  modes = jnp.full((64,), mode, jnp.int32)
  response = random_responses(d, x, prev, modes, jax.random.fold_in(key, 2))
  ptr = np.asarray(response) - permsort.PTR_0
  np.testing.assert_array_equal(
    np.sort(ptr, axis=1), np.broadcast_to(np.arange(6), ptr.shape)
  )
  answer = d.apply_response(x, prev, modes, response)
  source = x if mode == MODE_BASE else prev
  np.testing.assert_array_equal(np.sort(answer, 1), np.sort(source, 1))
  masks = d.response_masks(x, prev, modes, response)
  assert masks.shape == (64, 6, d.vocab_size)
  assert bool(jnp.all(jnp.take_along_axis(masks, response[..., None], 2)))


def test_identity_pointers_keep_the_previous_answer():
  d = PermSort(n=6)
  x = d.sample_tasks(jax.random.key(3), 8)
  prev = jnp.flip(x, axis=1)
  identity = jnp.broadcast_to(permsort.PTR_0 + jnp.arange(6), (8, 6))
  mode = jnp.full((8,), MODE_IMPROVE, jnp.int32)
  np.testing.assert_array_equal(d.apply_response(x, prev, mode, identity), prev)


def test_prompt_layout():
  d = PermSort(n=4)
  x = jnp.array([[3, 1, 2, 0], [5, 6, 7, 8]])
  prev = jnp.array([[0, 1, 2, 3], [8, 7, 6, 5]])
  mode = jnp.array([MODE_BASE, MODE_DIVERGE])
  prompt = np.asarray(d.build_prompt(x, prev, mode))
  assert prompt.shape == (2, d.prompt_len)
  b = base
  np.testing.assert_array_equal(
    prompt,
    [
      [b.BOS, 3, 1, 2, 0, b.SEP] + [b.BLANK] * 4 + [b.MODE_TOKEN_0],
      [b.BOS, 5, 6, 7, 8, b.SEP, 8, 7, 6, 5, b.MODE_TOKEN_0 + 2],
    ],
  )


@functools.partial(jax.jit, static_argnums=(0, 2))
def _sft(d, key, n):
  """Examples with their target answers and whether the masks allow them."""
  batch = d.sft_examples(key, n)
  masks = d.response_masks(*batch)
  ok = jnp.all(jnp.take_along_axis(masks, batch.target[..., None], 2))
  return batch, d.apply_response(*batch), ok


@heavy
def test_sft_examples_are_valid_and_follow_the_mix():
  d = PermSort(n=6, improve_random_share=0.0)
  batch, answer, ok = _sft(d, jax.random.key(4), 512)
  assert bool(ok)
  np.testing.assert_array_equal(np.sort(answer, 1), np.sort(batch.tasks, 1))
  mode = np.asarray(batch.mode)
  assert set(np.unique(mode)) == {MODE_BASE, MODE_IMPROVE, MODE_DIVERGE}
  np.testing.assert_array_equal(np.asarray(batch.prev)[mode == MODE_BASE], -1)
  # With no random swaps, an improve target is one pass: never worse.
  imp = mode == MODE_IMPROVE
  q_prev = d.quality(batch.tasks, batch.prev)
  q_new = d.quality(batch.tasks, answer)
  assert np.all(np.asarray(q_new)[imp] >= np.asarray(q_prev)[imp])
  # With only random swaps, an improve target moves exactly two entries.
  d = PermSort(n=6, improve_random_share=1.0)
  batch, _, _ = _sft(d, jax.random.key(4), 512)
  imp = np.asarray(batch.mode) == MODE_IMPROVE
  moved = np.asarray(batch.target) - permsort.PTR_0 != np.arange(6)
  np.testing.assert_array_equal(moved[imp].sum(1), 2)


@heavy
def test_sft_examples_are_deterministic_in_the_key():
  d = PermSort(n=6, improve_random_share=0.0)
  a, _, _ = _sft(d, jax.random.key(4), 512)
  b, _, _ = _sft(d, jax.random.key(4), 512)
  c, _, _ = _sft(d, jax.random.key(5), 512)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a.tasks, c.tasks)


def test_bad_input():
  with pytest.raises(ValueError, match="domain"):
    make_domain("sudoku")
  with pytest.raises(ValueError, match="bogus"):
    make_domain("permsort", bogus=1)
  with pytest.raises(ValueError, match="PermSort.n"):
    PermSort(n=1)
  with pytest.raises(ValueError, match="improve_random_share"):
    PermSort(improve_random_share=1.5)
  with pytest.raises(ValueError, match="sft_mode_probs"):
    PermSort(sft_mode_probs=(0.5, 0.5, 0.5))
  assert make_domain("permsort", n=5) == PermSort(n=5)
