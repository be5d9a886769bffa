"""jaxexit.exploratory_iteration.episodes on a toy "task + previous answer"."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxexit.exploratory_iteration import buffer as buf
from jaxexit.exploratory_iteration import episodes as ep
from tests.tiers import heavy

N, P, G, L = 16, 8, 3, 4


def _config(**kw):
  return buf.BufferConfig(
    **{**dict(capacity=N, min_fill=4, replay_prob=1.0, kappa=5.0), **kw}
  )


def _fresh(seed, p=P):
  x = jax.random.randint(jax.random.key(seed), (p, L), 0, 10)
  return {"x": x, "prev": jnp.full((p, L), -1)}


def make_child(start, response):
  return {"x": start["x"], "prev": response}


def _stocked(n_entries, depth, config=None):
  """A buffer with n distinct entries of the given depth."""
  config = config or _config()
  b = buf.init_buffer(config, jax.tree.map(lambda v: v[0], _fresh(0)))
  # Always N candidates (one compiled insert), the first n_entries valid.
  items = _fresh(99, N)
  items["prev"] = items["x"] + 100
  b, _ = buf.insert_batch(
    b,
    items,
    jnp.linspace(0.0, 0.2, N),
    jnp.full(N, depth),
    jnp.full(N, -1),
    jnp.full(N, ep.MODE_IMPROVE),
    jnp.arange(N) < n_entries,
    0,
    dedupe=False,
  )
  return b


@heavy
def test_min_fill_gates_replay():
  cfg = _config()
  key = jax.random.key(0)
  low = ep.select_starts(key, _stocked(3, 1), cfg, _fresh(1), 0.5)
  assert not np.any(low.from_buffer)
  np.testing.assert_array_equal(low.items["x"], _fresh(1)["x"])
  np.testing.assert_array_equal(low.buffer_idx, -1)
  np.testing.assert_array_equal(low.depth, 0)
  np.testing.assert_array_equal(low.mode, ep.MODE_BASE)
  full = ep.select_starts(key, _stocked(4, 1), cfg, _fresh(1), 0.5)
  assert np.all(full.from_buffer)
  off = ep.select_starts(
    key, _stocked(4, 1), cfg, _fresh(1), 0.5, allow_replay=False
  )
  assert not np.any(off.from_buffer)


@heavy
def test_replayed_starts_copy_entries_and_modes():
  b = _stocked(6, 2)
  cfg = _config(replay_prob=0.5)
  starts = ep.select_starts(jax.random.key(3), b, cfg, _fresh(1, 400), 0.3)
  rep = np.asarray(starts.from_buffer)
  assert 0.4 < rep.mean() < 0.6
  idx = np.asarray(starts.buffer_idx)
  np.testing.assert_array_equal(starts.items["x"][rep], b.items["x"][idx[rep]])
  np.testing.assert_array_equal(
    starts.items["prev"][rep], b.items["prev"][idx[rep]]
  )
  np.testing.assert_array_equal(
    starts.items["x"][~rep], _fresh(1, 400)["x"][~rep]
  )
  np.testing.assert_array_equal(starts.depth[rep], 2)
  mode = np.asarray(starts.mode)
  assert set(mode[rep]) == {ep.MODE_IMPROVE, ep.MODE_DIVERGE}
  assert 0.2 < np.mean(mode[rep] == ep.MODE_DIVERGE) < 0.4
  np.testing.assert_array_equal(mode[~rep], ep.MODE_BASE)
  never = ep.select_starts(jax.random.key(3), b, _config(), _fresh(1), 0.0)
  np.testing.assert_array_equal(never.mode, ep.MODE_IMPROVE)


def test_curriculum_only_never_improves():
  # Base tasks only, no expansion: every start stays a base task.
  cfg = _config(replay_prob=0.5)
  b = buf.init_buffer(cfg, jax.tree.map(lambda v: v[0], _fresh(0)))
  for it in range(6):
    starts = ep.select_starts(jax.random.key(it), b, cfg, _fresh(it), 1.0)
    np.testing.assert_array_equal(starts.mode, ep.MODE_BASE)
    scores = jax.random.uniform(jax.random.key(100 + it), (P,), maxval=0.25)
    b = ep.update_buffer(b, starts, scores, it, dedupe=True)
  assert buf.buffer_size(b) == N
  np.testing.assert_array_equal(b.depth, 0)


def test_children_inherit_scores():
  b = _stocked(4, 1)
  starts = ep.select_starts(
    jax.random.key(0), b, _config(replay_prob=0.5), _fresh(5), 0.0
  )
  responses = jax.random.randint(jax.random.key(1), (P, G, L), 0, 10)
  scores = jnp.arange(P) * 0.01
  parent = jnp.where(starts.from_buffer, starts.buffer_idx, 7)
  valid = jnp.ones((P, G), bool).at[0, 1].set(False)
  kids = ep.expand_children(
    make_child, starts, responses, scores, parent, valid=valid
  )
  assert kids.scores.shape == (P * G,)
  group = np.repeat(np.arange(P), G)
  np.testing.assert_allclose(kids.scores, np.asarray(scores)[group])
  np.testing.assert_array_equal(kids.depth, np.asarray(starts.depth)[group] + 1)
  np.testing.assert_array_equal(kids.parent, np.asarray(parent)[group])
  np.testing.assert_array_equal(kids.mode, np.asarray(starts.mode)[group])
  np.testing.assert_array_equal(kids.items["prev"], responses.reshape(P * G, L))
  np.testing.assert_array_equal(
    kids.items["x"], np.asarray(starts.items["x"])[group]
  )
  assert not kids.valid[1] and kids.valid.sum() == P * G - 1


def test_update_buffer_links_children_to_parents():
  cfg = _config(capacity=64, replay_prob=0.5)
  b = _stocked(4, 1, cfg)
  starts = ep.select_starts(jax.random.key(2), b, cfg, _fresh(5), 0.5)
  rep = np.asarray(starts.from_buffer)
  assert rep.any() and (~rep).any()
  responses = jax.random.randint(jax.random.key(1), (P, G, L), 10, 20)
  scores = 0.01 * (1 + jnp.arange(P))
  expand = lambda parent: ep.expand_children(
    make_child, starts, responses, scores, parent
  )
  out = ep.update_buffer(b, starts, scores, 9, dedupe=True, expand=expand)
  idx = np.asarray(starts.buffer_idx)
  for i in np.flatnonzero(rep):
    np.testing.assert_allclose(
      out.score[idx[i]], scores[idx == idx[i]].mean(), rtol=1e-6
    )
  assert buf.buffer_size(out) == 4 + (~rep).sum() + P * G
  new = np.asarray(out.inserted_at) == 9
  base = new & (np.asarray(out.depth) == 0)
  kids = new & (np.asarray(out.depth) > 0)
  assert base.sum() == (~rep).sum() and kids.sum() == P * G
  # Each child holds its parent's task one level deeper and inherits the S
  # of its own group (a slot drawn twice keeps the mean of both groups' S).
  par = np.asarray(out.parent)[kids]
  np.testing.assert_array_equal(out.items["x"][par], out.items["x"][kids])
  np.testing.assert_array_equal(out.depth[par] + 1, out.depth[kids])
  group = np.asarray(jnp.repeat(jnp.arange(P), G))
  order = np.argsort(np.flatnonzero(kids))  # kids were inserted in order
  np.testing.assert_allclose(out.score[kids][order], scores[group], rtol=1e-6)
  drawn_once = np.isin(
    par,
    idx[rep][
      np.unique(idx[rep], return_counts=True)[1][
        np.searchsorted(np.unique(idx[rep]), idx[rep])
      ]
      == 1
    ],
  )
  fresh_parent = ~np.isin(par, idx[rep])
  single = drawn_once | fresh_parent
  np.testing.assert_allclose(
    out.score[kids][single], out.score[par][single], rtol=1e-6
  )


def make_prefixes(start, response):
  # Turn t's prefix keeps the first t + 1 entries of the response; turn 2
  # only exists when the task's first digit is even.
  keep = jnp.arange(L)[None] <= jnp.arange(3)[:, None]  # [T, L]
  items = {
    "x": jnp.broadcast_to(start["x"], (3, L)),
    "prev": jnp.where(keep, response[None], -1),
  }
  return items, jnp.array([True, True, start["x"][0] % 2 == 0])


def test_expand_prefixes_flattens_turns():
  starts = ep.select_starts(
    jax.random.key(0), _stocked(4, 1), _config(), _fresh(5), 0.0
  )
  responses = jax.random.randint(jax.random.key(1), (P, G, L), 10, 20)
  scores = jnp.arange(P) * 0.01
  valid = jnp.ones((P, G), bool).at[2].set(False)
  cands = ep.expand_prefixes(
    make_prefixes, starts, responses, scores, starts.buffer_idx, valid=valid
  )
  assert cands.scores.shape == (P * G * 3,)
  group = np.repeat(np.arange(P), G * 3)
  turn = np.tile(np.arange(3), P * G)
  np.testing.assert_allclose(cands.scores, np.asarray(scores)[group])
  np.testing.assert_array_equal(cands.depth, 2)
  even = np.asarray(cands.items["x"][:, 0]) % 2 == 0
  np.testing.assert_array_equal(cands.valid, (group != 2) & ((turn < 2) | even))
  rollout = responses.reshape(P * G, L)[np.repeat(np.arange(P * G), 3)]
  prev = np.asarray(cands.items["prev"])
  np.testing.assert_array_equal(prev[turn == 0, 0], rollout[turn == 0, 0])
  np.testing.assert_array_equal(prev[turn == 0, 1:], -1)
  np.testing.assert_array_equal(prev[turn == 2, :3], rollout[turn == 2, :3])
  flat = ep.flatten_turns(
    {"a": jnp.arange(6).reshape(2, 3)},
    jnp.array([[1, 0, 1], [1, 1, 0]], bool),
    jnp.array([0.1, 0.2]),
    jnp.array([1, 2]),
    jnp.array([5, 6]),
    jnp.array([1, 2]),
  )
  np.testing.assert_array_equal(flat.items["a"], np.arange(6))
  np.testing.assert_array_equal(flat.parent, [5, 5, 5, 6, 6, 6])
  np.testing.assert_array_equal(flat.valid, [1, 0, 1, 1, 1, 0])


def _iteration(key, b, cfg, step):
  """One ExIt buffer iteration on random rollouts (jit- and vmap-safe)."""
  k_fresh, k_start, k_resp, k_score = jax.random.split(key, 4)
  fresh = {
    "x": jax.random.randint(k_fresh, (P, L), 0, 3),
    "prev": jnp.full((P, L), -1),
  }
  starts = ep.select_starts(k_start, b, cfg, fresh, 0.2)
  responses = jax.random.randint(k_resp, (P, G, L), 0, 3)
  scores = jax.random.uniform(k_score, (P,), maxval=0.25)
  expand = lambda parent: ep.expand_children(
    make_child, starts, responses, scores, parent
  )
  b = ep.update_buffer(
    b, starts, scores, step, dedupe=cfg.dedupe, expand=expand
  )
  return b, starts


def _train(key, cfg, iters=3):
  """`iters` iterations from an empty buffer as one `lax.scan`."""
  b = buf.init_buffer(cfg, jax.tree.map(lambda v: v[0], _fresh(0)))

  def body(b, xs):
    k, step = xs
    b, starts = _iteration(k, b, cfg, step)
    return b, starts.depth

  keys = jax.random.split(key, iters)
  return jax.lax.scan(body, b, (keys, jnp.arange(iters)))


@heavy
def test_jit_vmap_over_seeds_equals_eager_loop():
  cfg = _config(replay_prob=0.5, min_fill=P)
  seeds = jax.random.split(jax.random.key(0), 2)
  batched, depths = jax.jit(jax.vmap(lambda k: _train(k, cfg)))(seeds)
  for s in range(2):
    b = buf.init_buffer(cfg, jax.tree.map(lambda v: v[0], _fresh(0)))
    for step, k in enumerate(jax.random.split(seeds[s], 3)):
      b, starts = _iteration(k, b, cfg, step)
      np.testing.assert_array_equal(depths[s, step], starts.depth)
    jax.tree.map(
      lambda x, y, s=s: np.testing.assert_array_equal(x[s], y), batched, b
    )
  assert np.all(batched.filled) and np.max(depths) >= 1


def test_bad_input():
  b = _stocked(4, 1)
  with pytest.raises(ValueError, match="p_div"):
    ep.select_starts(jax.random.key(0), b, _config(), _fresh(1), 1.5)
  with pytest.raises(ValueError, match="fresh_items"):
    ep.select_starts(
      jax.random.key(0), b, _config(), {"x": _fresh(1)["x"]}, 0.1
    )
  with pytest.raises(ValueError, match="fresh_items"):
    ep.select_starts(
      jax.random.key(0),
      b,
      _config(),
      {
        "x": jnp.zeros((P, L + 1), jnp.int32),
        "prev": jnp.zeros((P, L), jnp.int32),
      },
      0.1,
    )
