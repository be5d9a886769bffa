"""A tiny random Llama, multimodal test inputs and plain references.

The references run the UNPRUNED merged sequence [prefix | vision | suffix]
through `LlamaLM.layer` (its KV-cache attention, not the pruning kernels),
hiding absent vision tokens as keys with validity flags and scoring with a
dense [B, H, N, N] softmax: everything the compacted two-stream forward
does, computed another way.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxexit.models.llama import LlamaConfig, LlamaLM
from jaxexit.pruning import PrunedInputs, VisionSchedule

CFG = LlamaConfig(
  vocab_size=64,
  d_model=32,
  num_layers=6,
  num_heads=4,
  num_kv_heads=2,
  mlp_hidden=64,
  max_position=4096,
)


@functools.cache
def tiny_lm(num_layers: int = 6, seed: int = 0, noise: float = 0.15) -> LlamaLM:
  """Random weights with noise on every tensor (norm scales too), so
  attention is peaked and selection gaps are far above float noise.
  Cached: callers must not mutate it (every pruning function is pure)."""
  cfg = dataclasses.replace(CFG, num_layers=num_layers)
  graphdef, state = nnx.split(LlamaLM(cfg, rngs=nnx.Rngs(seed)))
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  leaves = [
    x + noise * jax.random.normal(k, x.shape, x.dtype)
    for x, k in zip(leaves, keys)
  ]
  return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))


@dataclasses.dataclass(frozen=True)
class Case:
  """Two-stream inputs and the same example as one merged sequence."""

  inputs: PrunedInputs
  merged_h: jax.Array  # [B, N, D] prefix | vision | suffix embeddings
  merged_pos: jax.Array  # [B, N] persistent position ids
  merged_valid: jax.Array  # [B, N]
  text_rows: np.ndarray  # [T] merged index of each text token
  vision_rows: np.ndarray  # [Nv]


def make_case(
  batch: int = 2,
  prefix: int = 3,
  num_vision: int = 8,
  suffix: int = 5,
  pad: tuple[int, ...] = (0, 0),
  num_queries: int = 1,
  vision_pos: np.ndarray | None = None,
  seed: int = 0,
  d_model: int = CFG.d_model,
) -> Case:
  """Row b has `pad[b]` right-padding tokens at the end of its suffix;
  the query rows are the last `num_queries` valid text tokens."""
  k1, k2 = jax.random.split(jax.random.key(seed))
  t = prefix + suffix
  text_emb = jax.random.normal(k1, (batch, t, d_model))
  vision_emb = jax.random.normal(k2, (batch, num_vision, d_model))
  text_rows = np.concatenate(
    [np.arange(prefix), prefix + num_vision + np.arange(suffix)]
  )
  vision_rows = prefix + np.arange(num_vision)
  if vision_pos is None:
    vision_pos = vision_rows
  lengths = np.array([t - p for p in pad])
  text_valid = np.arange(t)[None, :] < lengths[:, None]  # [B, T]
  query = lengths[:, None] - num_queries + np.arange(num_queries)
  inputs = PrunedInputs(
    text_emb=text_emb,
    text_pos=jnp.broadcast_to(jnp.asarray(text_rows, jnp.int32), (batch, t)),
    text_valid=jnp.asarray(text_valid),
    vision_emb=vision_emb,
    vision_pos=jnp.broadcast_to(
      jnp.asarray(vision_pos, jnp.int32), (batch, num_vision)
    ),
    query_index=jnp.asarray(query, jnp.int32),
    query_valid=jnp.ones((batch, num_queries), bool),
  )
  n = t + num_vision
  merged_h = (
    jnp.zeros((batch, n, d_model))
    .at[:, text_rows]
    .set(text_emb)
    .at[:, vision_rows]
    .set(vision_emb)
  )
  merged_pos = np.zeros((batch, n), np.int32)
  merged_pos[:, text_rows] = text_rows
  merged_pos[:, vision_rows] = vision_pos
  merged_valid = np.ones((batch, n), bool)
  merged_valid[:, text_rows] = text_valid
  return Case(
    inputs,
    merged_h,
    jnp.asarray(merged_pos),
    jnp.asarray(merged_valid),
    text_rows,
    vision_rows,
  )


def run_layer(lm: LlamaLM, i: int, h, pos, valid):
  """`LlamaLM.layer` on a fresh cache large enough for every position."""
  cache = lm.init_cache(h.shape[0], int(jnp.max(pos)) + 1)[i]
  return lm.layer(i, h, cache, pos, valid)[0]


def vanilla_logits(lm: LlamaLM, case: Case) -> jax.Array:
  """[B, T, V] text logits of the unpruned model on the merged sequence."""
  h = case.merged_h
  for i in range(lm.num_layers):
    h = run_layer(lm, i, h, case.merged_pos, case.merged_valid)
  return lm.lm_head(lm.final_norm(h))[:, case.text_rows]


def dense_scores(lm: LlamaLM, i: int, h, pos, valid, query_rows):
  """[B, N] mean over heads and query rows of block i's softmax attention,
  from the full [B, H, N, N] map."""
  block, inv_freq = lm.layers[i], lm._inv_freq()
  x = block.input_layernorm(h)
  q = block.self_attn.query(x, pos, inv_freq)
  k, _ = block.self_attn.kv(x, pos, inv_freq)
  k = jnp.repeat(k, q.shape[2] // k.shape[2], axis=2)  # [B, N, H, K]
  logits = jnp.einsum("BQHK,BNHK->BHQN", q, k) / np.sqrt(q.shape[-1])
  mask = (pos[:, None, :] <= pos[:, :, None]) & valid[:, None, :]
  probs = jax.nn.softmax(jnp.where(mask[:, None], logits, -jnp.inf), -1)
  probs = probs.mean(axis=1)  # [B, N, N]
  rows = jnp.take_along_axis(probs, query_rows[:, :, None], axis=1)
  return rows.mean(axis=1)


def masked_reference(lm: LlamaLM, case: Case, schedule: VisionSchedule):
  """(text logits [B, T, V], kept original vision indices per drop, text
  position ids [B, T] of the last layer)."""
  keep, num_layers = schedule.keep, schedule.num_layers
  b = case.merged_h.shape[0]
  vis_cols = jnp.asarray(case.vision_rows)
  text_valid = case.merged_valid.at[:, vis_cols].set(False)
  query_rows = jnp.asarray(case.text_rows)[case.inputs.query_index]
  h, pos = case.merged_h, case.merged_pos
  present = jnp.zeros((b, len(case.vision_rows)), bool)
  kept = []
  for l in range(num_layers):
    if keep[l] and l == schedule.inject_layer:
      h = h.at[:, vis_cols].set(case.inputs.vision_emb)
      present = jnp.ones_like(present)
    valid = text_valid.at[:, vis_cols].set(present)
    h_in = h
    h = run_layer(lm, l, h, pos, valid)
    after = keep[l + 1] if l + 1 < num_layers else 0
    if 0 < after < keep[l]:
      i, hs = (l + 1, h) if schedule.score_layer == "next" else (l, h_in)
      scores = dense_scores(lm, i, hs, pos, valid, query_rows)[:, vis_cols]
      idx = jax.lax.top_k(jnp.where(present, scores, -jnp.inf), after)[1]
      idx = jnp.sort(idx, axis=-1)
      kept.append(idx)
      present = (
        jnp.zeros_like(present).at[jnp.arange(b)[:, None], idx].set(True)
      )
    elif after == 0:
      present = jnp.zeros_like(present)
    if (
      schedule.position_mode == "reindex"
      and after < keep[l]
      and l + 1 < num_layers
    ):
      # Merged order is sequence order: id = valid tokens before it.
      now = text_valid.at[:, vis_cols].set(present).astype(jnp.int32)
      pos = jnp.cumsum(now, axis=1) - now
  logits = lm.lm_head(lm.final_norm(h))[:, case.text_rows]
  return logits, kept, pos[:, case.text_rows]
