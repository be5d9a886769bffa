"""jaxexit.exploratory_iteration.buffer against a plain-Python reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxexit.exploratory_iteration import buffer as buf
from tests.tiers import slow

N, M, X = 6, 5, 3


def _config(**kw):
  return buf.BufferConfig(**{**dict(capacity=N, min_fill=2, kappa=20.0), **kw})


def _example():
  return {"x": jnp.zeros((X,), jnp.int32), "q": jnp.float32(0)}


class ReferenceBuffer:
  """The capacity rule written as plain Python lists."""

  def __init__(self, n):
    self.slots = [None] * n

  def insert(self, item, score, depth, valid, dedupe):
    if not valid:
      return -1
    if dedupe:
      for i, s in enumerate(self.slots):
        if s is not None and s["item"] == item:
          s["score"] = score
          return i
    entry = dict(item=item, score=score, depth=depth)
    for i, s in enumerate(self.slots):
      if s is None:
        self.slots[i] = entry
        return i
    low = min(range(len(self.slots)), key=lambda i: self.slots[i]["score"])
    if score >= self.slots[low]["score"]:
      self.slots[low] = entry
      return low
    return -1


def _candidates(rng, m=M):
  """Random candidates from a small item space (duplicates, score ties)."""
  return dict(
    items={
      "x": rng.integers(0, 2, (m, X)).astype(np.int32),
      "q": (rng.integers(0, 2, m) * 0.5).astype(np.float32),
    },
    scores=(rng.integers(0, 6, m) * 0.05).astype(np.float32),
    depth=rng.integers(0, 4, m).astype(np.int32),
    parent=rng.integers(-1, N, m).astype(np.int32),
    mode=rng.integers(0, 3, m).astype(np.int32),
    valid=rng.random(m) < 0.9,
  )


def _insert(buffer, c, step, dedupe):
  return buf.insert_batch(
    buffer,
    jax.tree.map(jnp.asarray, c["items"]),
    jnp.asarray(c["scores"]),
    jnp.asarray(c["depth"]),
    jnp.asarray(c["parent"]),
    jnp.asarray(c["mode"]),
    jnp.asarray(c["valid"]),
    step,
    dedupe=dedupe,
  )


def _item(c, j):
  return (tuple(int(v) for v in c["items"]["x"][j]), float(c["items"]["q"][j]))


@pytest.mark.parametrize("dedupe", [False, True])
def test_insert_matches_reference_and_keeps_top_n(dedupe):
  rng = np.random.default_rng(int(dedupe))
  buffer = buf.init_buffer(_config(), _example())
  ref = ReferenceBuffer(N)
  seen = []
  insert = jax.jit(buf.insert_batch, static_argnames="dedupe")
  for step in range(25):
    c = _candidates(rng)
    buffer, slots = insert(
      buffer,
      jax.tree.map(jnp.asarray, c["items"]),
      c["scores"],
      c["depth"],
      c["parent"],
      c["mode"],
      c["valid"],
      step,
      dedupe=dedupe,
    )
    ref_slots = [
      ref.insert(
        _item(c, j), c["scores"][j], c["depth"][j], c["valid"][j], dedupe
      )
      for j in range(M)
    ]
    np.testing.assert_array_equal(slots, ref_slots)
    seen += list(c["scores"][c["valid"]])
  for i, s in enumerate(ref.slots):
    assert bool(buffer.filled[i])
    assert buffer.score[i] == s["score"] and buffer.depth[i] == s["depth"]
    assert (
      tuple(int(v) for v in buffer.items["x"][i]),
      float(buffer.items["q"][i]),
    ) == s["item"]
  if not dedupe:
    np.testing.assert_array_equal(np.sort(buffer.score), np.sort(seen)[-N:])
  else:
    items = {_item({"items": buffer.items}, i) for i in range(N)}
    assert len(items) == N


def test_insert_bookkeeping_and_jit_equals_eager():
  rng = np.random.default_rng(3)
  c = _candidates(rng, m=4)
  c["valid"][:] = True
  empty = buf.init_buffer(_config(), _example())
  eager, slots = _insert(empty, c, 7, dedupe=False)
  np.testing.assert_array_equal(slots, [0, 1, 2, 3])
  np.testing.assert_array_equal(eager.inserted_at[:4], 7)
  np.testing.assert_array_equal(eager.parent[:4], c["parent"])
  np.testing.assert_array_equal(eager.mode[:4], c["mode"])
  np.testing.assert_array_equal(eager.filled, [1, 1, 1, 1, 0, 0])
  assert np.all(np.isneginf(eager.score[4:]))
  assert buf.buffer_size(eager) == 4
  jitted, _ = jax.jit(functools.partial(_insert, c=c, step=7, dedupe=False))(
    empty
  )
  jax.tree.map(np.testing.assert_array_equal, jitted, eager)


def test_dedupe_overwrites_score_only():
  items = {"x": jnp.zeros((2, X), jnp.int32), "q": jnp.zeros((2,))}
  b = buf.init_buffer(_config(), _example())
  b, _ = buf.insert_batch(
    b,
    items,
    jnp.array([0.2, 0.05]),
    jnp.array([1, 3]),
    jnp.array([-1, 4]),
    jnp.array([0, 2]),
    jnp.ones(2, bool),
    5,
    dedupe=True,
  )
  assert buf.buffer_size(b) == 1
  assert b.score[0] == np.float32(0.05)
  assert (b.depth[0], b.parent[0], b.mode[0], b.inserted_at[0]) == (1, -1, 0, 5)
  b2, _ = buf.insert_batch(
    b,
    items,
    jnp.array([0.2, 0.05]),
    jnp.array([1, 3]),
    jnp.array([-1, 4]),
    jnp.array([0, 2]),
    jnp.ones(2, bool),
    5,
    dedupe=False,
  )
  assert buf.buffer_size(b2) == 3


def test_update_scores_mean_of_duplicates_and_masks():
  b = buf.init_buffer(_config(), _example())
  b = _insert(
    b,
    dict(
      items={"x": np.arange(3 * X).reshape(3, X), "q": np.zeros(3, np.float32)},
      scores=np.full(3, 0.1, np.float32),
      depth=np.zeros(3, np.int32),
      parent=np.full(3, -1, np.int32),
      mode=np.zeros(3, np.int32),
      valid=np.ones(3, bool),
    ),
    0,
    False,
  )[0]
  idx = jnp.array([0, 0, 1, 2, 5])
  new = jnp.array([0.2, 0.4, 0.3, 0.9, 0.7])
  mask = jnp.array([True, True, True, False, True])
  out = buf.update_scores(b, idx, new, mask)
  np.testing.assert_allclose(out.score[:3], [0.3, 0.3, 0.1], rtol=1e-6)
  assert np.isneginf(out.score[5]) and not out.filled[5]
  jitted = jax.jit(buf.update_scores)(b, idx, new, mask)
  np.testing.assert_array_equal(jitted.score, out.score)


def _filled_buffer(scores):
  n = len(scores)
  cfg = buf.BufferConfig(capacity=n, min_fill=1)
  b = buf.init_buffer(cfg, jnp.zeros((), jnp.int32))
  return b, buf.insert_batch(
    b,
    jnp.arange(n),
    jnp.asarray(scores),
    jnp.zeros(n, jnp.int32),
    jnp.full(n, -1, jnp.int32),
    jnp.zeros(n, jnp.int32),
    jnp.ones(n, bool),
    0,
    dedupe=False,
  )[0]


def test_sampling_frequencies_follow_softmax():
  scores = np.array([0.0, 0.05, 0.1, 0.25, 0.2], np.float32)
  _, b = _filled_buffer(scores)
  # Leave slot 4 empty: it must never be drawn.
  b = buf.TaskBuffer(
    **{
      **vars(b),
      "filled": b.filled.at[4].set(False),
      "score": b.score.at[4].set(-jnp.inf),
    }
  )
  kappa = 10.0
  w = np.exp(kappa * scores[:4])
  expected = np.append(w / w.sum(), 0.0)
  n = 40_000
  draw = jax.jit(buf.sample, static_argnums=2)
  idx = draw(b, jax.random.key(0), n, kappa)
  freq = np.bincount(np.asarray(idx), minlength=5) / n
  np.testing.assert_allclose(freq, expected, atol=0.01)
  np.testing.assert_allclose(buf.replay_probs(b, kappa), expected, atol=1e-6)
  np.testing.assert_array_equal(idx, buf.sample(b, jax.random.key(0), n, kappa))
  uniform = buf.sample(b, jax.random.key(1), n, 0.0)
  np.testing.assert_allclose(
    np.bincount(np.asarray(uniform), minlength=5) / n,
    [0.25] * 4 + [0],
    atol=0.01,
  )


def test_score_norm_sharpens_replay():
  scores = np.array([0.001, 0.002, 0.003, 0.004], np.float32)
  _, b = _filled_buffer(scores)
  flat = buf.replay_probs(b, 20.0)
  ranked = buf.replay_probs(b, 3.0, score_norm="rank")
  assert flat.max() / flat.min() < 1.1
  np.testing.assert_allclose(
    ranked.max() / ranked.min(), np.exp(3.0), rtol=1e-5
  )


def test_stats():
  scores = np.array([0.0, 0.05, 0.2, 0.3], np.float32)
  empty, b = _filled_buffer(scores)
  b = buf.TaskBuffer(
    **{
      **vars(b),
      "depth": jnp.array([0, 1, 2, 3]),
      "inserted_at": jnp.array([0, 2, 4, 6]),
    }
  )
  stats = jax.jit(functools.partial(buf.buffer_stats, kappa=0.0, num_bins=5))(
    b, 10
  )
  assert stats["size"] == 4
  np.testing.assert_allclose(stats["score_mean"], scores.mean(), rtol=1e-6)
  np.testing.assert_allclose(stats["score_max"], 0.3)
  np.testing.assert_allclose(stats["depth_mean"], 1.5)
  assert stats["depth_max"] == 3
  np.testing.assert_allclose(stats["age_mean"], 7.0)
  np.testing.assert_allclose(stats["replay_age_mean"], 7.0)
  np.testing.assert_allclose(stats["replay_ess"], 4.0, rtol=1e-5)
  np.testing.assert_array_equal(stats["score_hist"], [1, 1, 0, 0, 2])
  peaked = buf.buffer_stats(b, 10, kappa=200.0)
  assert peaked["replay_ess"] < 1.01
  np.testing.assert_allclose(peaked["replay_depth_mean"], 3.0, atol=1e-3)
  nothing = buf.buffer_stats(empty, 0, kappa=1.0)
  for value in jax.tree.leaves(nothing):
    assert np.all(np.isfinite(value))
  assert nothing["size"] == 0 and nothing["replay_ess"] == 0


@slow
def test_vmap_over_seeds_matches_per_seed():
  cfg = _config()

  def run(key):
    k1, k2, k3 = jax.random.split(key, 3)
    b = buf.init_buffer(cfg, _example())
    items = {"x": jax.random.randint(k1, (8, X), 0, 2), "q": jnp.zeros((8,))}
    scores = jax.random.uniform(k2, (8,))
    b, _ = buf.insert_batch(
      b,
      items,
      scores,
      jnp.zeros(8, jnp.int32),
      jnp.full(8, -1, jnp.int32),
      jnp.zeros(8, jnp.int32),
      jnp.ones(8, bool),
      0,
      dedupe=True,
    )
    return b, buf.sample(b, k3, 4, cfg.kappa)

  keys = jax.random.split(jax.random.key(0), 3)
  batched, idx = jax.jit(jax.vmap(run))(keys)
  for s in range(3):
    one, one_idx = jax.jit(run)(keys[s])
    jax.tree.map(
      lambda a, b, s=s: np.testing.assert_array_equal(a[s], b), batched, one
    )
    np.testing.assert_array_equal(idx[s], one_idx)


def test_bad_input():
  for kw, name in [
    (dict(capacity=0), "capacity"),
    (dict(min_fill=N + 1), "min_fill"),
    (dict(min_fill=0), "min_fill"),
    (dict(kappa=-1.0), "kappa"),
    (dict(replay_prob=1.5), "replay_prob"),
    (dict(score_norm="temp"), "score_norm"),
  ]:
    with pytest.raises(ValueError, match=name):
      _config(**kw)
  b = buf.init_buffer(_config(), _example())
  ones = jnp.ones(2, jnp.int32)
  with pytest.raises(ValueError, match="leaf"):
    buf.insert_batch(
      b,
      {"x": jnp.zeros((2, X + 1), jnp.int32), "q": jnp.zeros(2)},
      jnp.zeros(2),
      ones,
      ones,
      ones,
      jnp.ones(2, bool),
      0,
      dedupe=False,
    )
  with pytest.raises(ValueError, match="structure"):
    buf.insert_batch(
      b,
      jnp.zeros((2, X)),
      jnp.zeros(2),
      ones,
      ones,
      ones,
      jnp.ones(2, bool),
      0,
      dedupe=False,
    )
  with pytest.raises(ValueError, match="scores"):
    buf.insert_batch(
      b,
      {"x": jnp.zeros((2, X), jnp.int32), "q": jnp.zeros(2)},
      jnp.array([0.1, jnp.nan]),
      ones,
      ones,
      ones,
      jnp.ones(2, bool),
      0,
      dedupe=False,
    )
  with pytest.raises(ValueError, match="kappa"):
    buf.sample(b, jax.random.key(0), 3, -2.0)
