"""CE-CoLLM split: edge + cloud catch-up equal the full model's own decode;
hidden-state transport error per wire mode; bad inputs."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxexit.decoding.exit_heads import LMHeadExits
from jaxexit.methods.dynamax import ExitClassifierConfig, ExitClassifiers
from jaxexit.models.llama import LlamaLM
from jaxexit.models.llama_weights import LLAMA_CONFIGS
from jaxexit.models.mamba import MAMBA_CONFIGS, MambaLM
from jaxexit.serve import split, wire
from tests.jaxexit.exits.rule_driver import unchecked
from tests.tiers import fast_only, slow

TOL = dict(rtol=1e-5, atol=1e-5)
L = 4  # blocks of both tiny models, so k ∈ {1, 2, 3}
BUCKETS = (1, 2, 4)  # a 7-token prompt takes chunks of 4 + 3 (bucket 4)


@functools.cache
def _model(family: str):
  if family == "llama":
    cfg = dataclasses.replace(LLAMA_CONFIGS["tiny"], num_layers=L)
    return LlamaLM(cfg, rngs=nnx.Rngs(0))
  cfg = dataclasses.replace(MAMBA_CONFIGS["tiny"], num_layers=L)
  return MambaLM(cfg, rngs=nnx.Rngs(0))


def _tokens(family, batch, length, seed=1):
  v = _model(family).vocab_size
  return jax.random.randint(jax.random.key(seed), (batch, length), 0, v)


def _positions(batch, start, stop):
  return jnp.broadcast_to(jnp.arange(start, stop), (batch, stop - start))


@functools.partial(jax.jit, static_argnames="graphdef")
def _full_call(graphdef, params, caches, tokens, positions):
  model = nnx.merge(graphdef, params)
  h, caches = model.embed(tokens), list(caches)
  valid = jnp.ones(tokens.shape, bool)
  for i in range(model.num_layers):
    h, caches[i] = model.layer(i, h, caches[i], positions, valid)
  return model.lm_head(model.final_norm(h)), tuple(caches)


def _reference_decode(model, tokens, prompt_len):
  """The full model's own decode: prefill, then one token per step.

  Returns [B, N, V] logits at every position."""
  b, n = tokens.shape
  graphdef, params = nnx.split(model)
  caches = model.init_cache(b, n)
  logits, caches = _full_call(
    graphdef,
    params,
    caches,
    tokens[:, :prompt_len],
    _positions(b, 0, prompt_len),
  )
  out = [logits]
  for t in range(prompt_len, n):
    logits, caches = _full_call(
      graphdef, params, caches, tokens[:, t : t + 1], _positions(b, t, t + 1)
    )
    out.append(logits)
  return np.concatenate(out, axis=1)


def _split_decode(model, k, tokens, prompt_len, schedule, heads=None):
  """Edge prefill + cloud catch-up over the prompt, then one edge step per
  token; the cloud catches up after every `schedule` pending positions.

  Returns {position: cloud logits [B, V]} and the edge's exit logits
  [B, N - prompt_len + 1, V] (prompt's last position, then each step)."""
  b, n = tokens.shape
  edge = split.EdgeModel(model, k, batch=b, max_len=n, heads=heads)
  cloud = split.CloudModel(model, k, batch=b, max_len=n, buckets=BUCKETS)
  out = edge(tokens[:, :prompt_len], _positions(b, 0, prompt_len))
  assert out.hidden.shape == (b, prompt_len, model.d_model)
  cloud_logits = {
    prompt_len - 1: cloud.catch_up(out.hidden, _positions(b, 0, prompt_len))
  }
  exit_logits, pending = [out.logits], []
  sizes = iter(schedule)
  size = next(sizes)
  for t in range(prompt_len, n):
    out = edge(tokens[:, t : t + 1], _positions(b, t, t + 1))
    exit_logits.append(out.logits)
    pending.append(out.hidden)
    if len(pending) == size or t == n - 1:
      first = t + 1 - len(pending)
      hidden = jnp.concatenate(pending, axis=1)  # [B, n_pending, D]
      cloud_logits[t] = cloud.catch_up(hidden, _positions(b, first, t + 1))
      pending, size = [], next(sizes)
  return cloud_logits, jnp.stack(exit_logits, axis=1)


CASES = [(f, k) for f in ("llama", "mamba") for k in (1, 2, 3)]


@pytest.mark.parametrize(
  "family,k", fast_only(CASES, ("llama", 2), ("mamba", 2))
)
def test_split_decode_equals_full_decode(family, k):
  model = _model(family)
  prompt_len, n = 7, 16
  tokens = _tokens(family, 2, n)
  ref = _reference_decode(model, tokens, prompt_len)
  schedule = np.random.default_rng(k).integers(1, 4, size=n)
  cloud, exits = _split_decode(model, k, tokens, prompt_len, schedule)
  assert len(cloud) > 3  # several catch-ups of 1–3 positions
  for t, logits in cloud.items():
    np.testing.assert_allclose(logits, ref[:, t], **TOL, err_msg=f"{t=}")
  # Edge exit (LMHeadExits): final norm + LM head on hidden-state index k.
  full = model(tokens)
  want = model.lm_head(model.final_norm(full.hidden_states[k]))
  np.testing.assert_allclose(exits, want[:, prompt_len - 1 :], **TOL)


def _perturbed(module, scale=0.1):
  graphdef, state = nnx.split(module)
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(7), len(leaves))
  leaves = [
    x + scale * jax.random.normal(key, x.shape, x.dtype)
    for x, key in zip(leaves, keys)
  ]
  return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves))


@slow
def test_trained_recurrent_exit_head_matches_full_sequence():
  """A DYNAMAX Mamba exit head on the edge, stepped per token, equals the
  head run once over the whole sequence of layer-k states."""
  model, k, prompt_len, n = _model("llama"), 2, 5, 9
  cfg = ExitClassifierConfig(
    kind="mamba", num_exits=1, d_model=model.d_model, mamba_width=8
  )
  heads = _perturbed(ExitClassifiers(cfg, rngs=nnx.Rngs(3)))
  tokens = _tokens("llama", 2, n)
  _, exits = _split_decode(model, k, tokens, prompt_len, [n] * n, heads=heads)
  hidden = model(tokens).hidden_states[k]
  state = heads.init_state(1, 2, n)[0]
  valid = jnp.ones(tokens.shape, bool)
  want, _ = heads(model, 0, hidden, state, _positions(2, 0, n), valid)
  plain, _ = LMHeadExits()(model, 0, hidden, (), None, None)
  assert not np.allclose(exits, plain[:, prompt_len - 1 :], atol=1e-3)
  np.testing.assert_allclose(exits, want[:, prompt_len - 1 :], **TOL)


@pytest.mark.parametrize("family", fast_only(["llama", "mamba"], "llama"))
def test_ragged_rows(family):
  """Right-padded prompts of different lengths, then one step per row at
  its own position: each row's last valid logits are the full model's."""
  model, k, lengths, n = _model(family), 2, (7, 4), 8
  tokens = _tokens(family, 2, n)
  edge = split.EdgeModel(model, k, batch=2, max_len=n)
  cloud = split.CloudModel(model, k, batch=2, max_len=n, buckets=BUCKETS)
  positions = _positions(2, 0, 7)
  valid = positions < jnp.asarray(lengths)[:, None]
  out = edge(tokens[:, :7], positions, valid)
  got = [cloud.catch_up(out.hidden, positions, valid)]
  step = jnp.asarray(lengths)[:, None]  # [B, 1] each row's next position
  out = edge(jnp.take_along_axis(tokens, step, axis=1), step)
  got.append(cloud.catch_up(out.hidden, step))
  for r, length in enumerate(lengths):
    for j, last in enumerate((length - 1, length)):
      want = model(tokens[r : r + 1, : last + 1]).logits[0, -1]
      np.testing.assert_allclose(got[j][r], want, **TOL, err_msg=f"{r=}")


def test_one_program_per_bucket():
  model, n = _model("llama"), 12
  tokens = _tokens("llama", 1, n)
  edge = split.EdgeModel(model, 2, batch=1, max_len=n)
  cloud = split.CloudModel(model, 2, batch=1, max_len=n, buckets=(2, 4))
  hidden = edge(tokens, _positions(1, 0, n)).hidden
  cloud.catch_up(hidden[:, :3], _positions(1, 0, 3))  # bucket 4
  before = split._cloud_jit._cache_size()
  cloud.catch_up(hidden[:, 3:7], _positions(1, 3, 7))  # bucket 4 again
  cloud.catch_up(hidden[:, 7:12], _positions(1, 7, 12))  # 4 + 1 (bucket 2)
  assert split._cloud_jit._cache_size() == before + 1
  assert [cloud.bucket(i) for i in (1, 2, 3, 4, 9)] == [2, 2, 4, 4, 4]
  # reset: fresh caches (the initial ones were never donated).
  first = cloud.catch_up(hidden[:, :3], _positions(1, 0, 3))
  cloud.reset()
  edge.reset()
  hidden = edge(tokens[:, :3], _positions(1, 0, 3)).hidden
  np.testing.assert_array_equal(
    cloud.catch_up(hidden, _positions(1, 0, 3)), first
  )


# ---- transport ----


def _chunks(n, seed=0):
  """Catch-up chunks of 1–3 positions covering [0, n): (start, stop)."""
  sizes = np.random.default_rng(seed).integers(1, 4, size=n)
  stops = np.minimum(np.cumsum(sizes), n)
  stops = stops[: int(np.searchsorted(stops, n)) + 1]
  return list(zip([0, *stops[:-1]], stops))


def _cloud_logits_from(model, k, hidden, mode):
  """Uploads [B, N, D] states through the wire in `mode`, one payload per
  position, and catches up chunk by chunk (`_chunks`).

  Returns the received states [B, N, D] and the cloud logits [B, C, V] at
  the last position of each chunk."""
  b, n, _ = hidden.shape
  rows = []
  for t in range(n):
    buf = wire.to_bytes(wire.quantize(hidden[:, t : t + 1], mode))
    rows.append(wire.dequantize(wire.from_bytes(buf, d=model.d_model)))
  received = np.concatenate(rows, axis=1)
  cloud = split.CloudModel(model, k, batch=b, max_len=n, buckets=BUCKETS)
  logits = [
    cloud.catch_up(received[:, start:stop], _positions(b, start, stop))
    for start, stop in _chunks(n)
  ]
  return received, np.stack(logits, axis=1)


@pytest.mark.parametrize("family", fast_only(["llama", "mamba"], "llama"))
def test_transport_error_orders_fp32_fp16_int8(family, capsys):
  model, k, b, n = _model(family), 2, 4, 24
  tokens = _tokens(family, b, n, seed=5)
  edge = split.EdgeModel(model, k, batch=b, max_len=n)
  hidden = np.asarray(edge(tokens, _positions(b, 0, n)).hidden)
  ref = _reference_decode(model, tokens, n)
  ends = [stop - 1 for _, stop in _chunks(n)]
  received, base = _cloud_logits_from(model, k, hidden, "fp32")
  np.testing.assert_array_equal(received, hidden)  # fp32 is lossless
  np.testing.assert_allclose(base, ref[:, ends], **TOL)
  errors, agree = {}, {}
  for mode in wire.MODES:
    _, logits = _cloud_logits_from(model, k, hidden, mode)
    errors[mode] = float(np.abs(logits - base).max())
    agree[mode] = float((logits.argmax(-1) == base.argmax(-1)).mean())
  with capsys.disabled():
    print(f"\n{family} k={k}: max|Δlogits| {errors}, top-1 {agree}")
  assert errors["fp32"] == 0.0
  assert errors["fp32"] <= errors["fp16"] <= errors["int8"]
  assert agree["int8"] >= 0.9
  assert agree["fp16"] >= agree["int8"] - 0.05


def test_quantize_round_trip_bounds():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 5, 16)).astype(np.float32) * 4
  x[1, 2] = 0.0  # an all-zero row: scale 0, exact zeros back
  for mode in wire.MODES:
    p = wire.quantize(x, mode)
    buf = wire.to_bytes(p)
    assert len(buf) == wire.header_bytes(3) + wire.payload_bytes(15, 16, mode)
    back = wire.dequantize(wire.from_bytes(buf, d=16))
    assert back.dtype == np.float32 and back.shape == x.shape
    err = np.abs(back - x)
    if mode == "fp32":
      np.testing.assert_array_equal(back, x)
    elif mode == "fp16":
      assert (err <= np.abs(x) * 2.0**-11 + 1e-7).all()
    else:
      assert (err <= p.scale[..., None] / 2 + 1e-7).all()
      np.testing.assert_array_equal(back[1, 2], 0.0)
      # Per-row scales: quantising a slice gives the same rows.
      sub = wire.quantize(x[:, 3:4], mode)
      np.testing.assert_array_equal(sub.data, p.data[:, 3:4])


def test_payload_bytes():
  # The spec's example: d = 4096, 16 KiB → 8 KiB per position in fp16.
  assert wire.payload_bytes(1, 4096, "fp32") == 16384
  assert wire.payload_bytes(1, 4096, "fp16") == 8192
  assert wire.payload_bytes(10, 4096, "int8") == 10 * (4096 + 4)


# ---- bad input ----


@pytest.mark.parametrize("k", [0, L, -1, L + 1, True])
def test_split_layer_out_of_range(k):
  model = _model("llama")
  for make in (split.EdgeModel, split.CloudModel):
    with pytest.raises(ValueError, match=f"k={k!r}"):
      make(model, k, batch=1, max_len=4)
  if not isinstance(k, bool):
    with pytest.raises(ValueError, match=rf"k={k} .*\[1, 3\].*L=4"):
      split.check_split(L, k)
  with pytest.raises(ValueError, match="must be an int; got k=1.5"):
    unchecked(split.check_split)(L, 1.5)


def _good_bytes(mode="int8", shape=(2, 8)):
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  return wire.to_bytes(wire.quantize(x, mode))


@pytest.mark.parametrize(
  "mutate,match",
  [
    (lambda b: b[:-1], "needs .* bytes; got"),
    (lambda b: b + b"\0", "needs .* bytes; got"),
    (lambda b: b[:3], "shorter than the 6-byte header"),
    (lambda b: b"XXXX" + b[4:], "bad payload magic"),
    (lambda b: b[:4] + bytes([7]) + b[5:], "unknown payload mode code 7"),
    (lambda b: b[:5] + bytes([3]) + b[6:], "needs .* bytes|truncated"),
    (lambda b: b[:6] + bytes(4) + b[10:], "empty dimension"),
  ],
  ids=["short", "long", "header", "magic", "mode", "ndim", "zero_dim"],
)
def test_from_bytes_rejects(mutate, match):
  with pytest.raises(ValueError, match=match):
    wire.from_bytes(mutate(_good_bytes()))


def test_from_bytes_rejects_wrong_width_and_bad_scale():
  with pytest.raises(ValueError, match="width 8; expected D=16"):
    wire.from_bytes(_good_bytes(), d=16)
  buf = bytearray(_good_bytes())
  buf[-4:] = np.float32(-1.0).tobytes()  # a negative scale
  with pytest.raises(ValueError, match="finite and >= 0"):
    wire.from_bytes(bytes(buf))


def test_payload_dtype_and_shape_checks():
  x = np.ones((2, 8), np.float32)
  bad = [
    (wire.Payload("fp16", x, None), "numpy float16"),
    (wire.Payload("int8", x.astype(np.int8), None), "float32 numpy scale"),
    (wire.Payload("int8", x.astype(np.int8), np.ones(3, np.float32)), "2,"),
    (wire.Payload("fp32", x, np.ones(2, np.float32)), "carries no scale"),
    (wire.Payload("bf16", x, None), "unknown payload mode"),
  ]
  for payload, match in bad:
    for fn in (wire.to_bytes, wire.dequantize):
      with pytest.raises(ValueError, match=match):
        fn(payload)
  with pytest.raises(ValueError, match="unknown mode"):
    wire.quantize(x, "int4")
  with pytest.raises(ValueError, match="NaN or inf"):
    wire.quantize(np.full((1, 4), np.nan, np.float32), "int8")
  with pytest.raises(ValueError, match="float array"):
    wire.quantize(np.ones((1, 4), np.int32), "fp32")
  with pytest.raises(ValueError, match="beyond float16"):
    wire.quantize(np.full((1, 4), 1e5, np.float32), "fp16")


def test_catch_up_rejects_bad_shapes():
  """The library's own checks, below the test hook's jaxtyping checks."""
  catch_up = unchecked(split.CloudModel.catch_up)
  model = _model("llama")
  d = model.d_model
  cloud = split.CloudModel(model, 1, batch=2, max_len=8)
  pos = _positions(2, 0, 3)
  h = np.zeros((2, 3, d), np.float32)
  with pytest.raises(ValueError, match=f"D={d}"):
    catch_up(cloud, np.zeros((2, 3, d + 1), np.float32), pos)
  with pytest.raises(ValueError, match="B=2"):
    catch_up(cloud, np.zeros((1, 3, d), np.float32), pos[:1])
  with pytest.raises(ValueError, match="positions.shape"):
    catch_up(cloud, h, pos[:, :2])
  with pytest.raises(ValueError, match="max_len=8"):
    catch_up(cloud, h, pos + 6)
  with pytest.raises(ValueError, match="must be bool"):
    catch_up(cloud, h, pos, np.ones((2, 3), np.int32))
  with pytest.raises(ValueError, match="buckets"):
    split.CloudModel(model, 1, batch=2, max_len=8, buckets=(4, 2))


def test_edge_rejects_bad_tokens_and_positions():
  model = _model("llama")
  edge = split.EdgeModel(model, 1, batch=1, max_len=4)
  with pytest.raises(ValueError, match=r"\[0, 128\)"):
    edge(jnp.full((1, 2), model.vocab_size), _positions(1, 0, 2))
  with pytest.raises(ValueError, match="max_len=4"):
    edge(jnp.zeros((1, 2), jnp.int32), _positions(1, 3, 5))
