"""Pruned prefill / training forward of a Llama decoder over text + vision.

HiDrop (spec `hidrop_pallas.md` §2.2, §3), PyramidDrop (§4) and FastV (§5)
as one static-shape forward driven by a `VisionSchedule`. Two streams are
carried: the text stream `[B, T]` and the vision stream `[B, k_l]` (k_l
static per layer); each layer runs on the buffer `[text | kept vision]` with
attention causal by position id (`kernels_pallas.position_attention`'s
contract), so buffer order is irrelevant and RoPE reads the carried ids.

* Layers before `inject_layer` see text only; at `inject_layer` the
  ORIGINAL vision embeddings (projector outputs) enter (late injection).
* After the last layer of each shrinking stage, `importance_scores` ranks
  the vision stream (next layer's or current layer's q/k, under
  stop-gradient), `topk_indices` picks k_{s+1}, and hidden states, position
  ids, validity and original indices of the vision stream are gathered.
* At `exit_layer` the vision stream is dropped.
* "persistent" positions never change. "reindex" (PyramidDrop) renumbers
  after every drop and at the exit: a token's new id is the number of valid
  tokens before it in sequence order (the original ids are kept as the
  order key).

Every layer runs through ONE jitted block function taking the block's
parameters as an argument, so the number of traced block programs is the
number of distinct buffer lengths (tests/jaxexit/pruning/forward_trace_test.py
counts the traces).

Axes: B batch, T text tokens, Nv vision tokens, N = T + k buffer tokens,
Q query rows, D width, V vocabulary, L layers.
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxexit import checks
from jaxexit.models.llama import LlamaConfig, LlamaLM, block_forward
from jaxexit.models.llama_attention import rope_inv_freq
from jaxexit.pruning.kernels import IMPLS, attention_fn
from jaxexit.pruning.schedule import VisionSchedule
from jaxexit.pruning.selection import (
  importance_scores,
  straight_through_topk_mask,
  topk_indices,
)
from jaxexit.typing import Array, PyTree

SELECTIONS = ("hard", "soft")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PrunedInputs:
  """Inputs of `pruned_forward` (a pytree).

  Attributes:
    text_emb: [B, T, D] text token embeddings.
    text_pos: [B, T] int32 persistent position ids: text after the image
      is offset by Nv as in the unpruned sequence.
    text_valid: [B, T] bool, False at padding.
    vision_emb: [B, Nv, D] projector outputs.
    vision_pos: [B, Nv] int32 position ids of the vision tokens.
    query_index: [B, Q] int32 indices into the text stream of the query
      rows (the last instruction token(s)).
    query_valid: [B, Q] bool, which query rows count.
  """

  text_emb: PyTree
  text_pos: PyTree
  text_valid: PyTree
  vision_emb: PyTree
  vision_pos: PyTree
  query_index: PyTree
  query_valid: PyTree


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PrunedOutput:
  """Output of `pruned_forward`.

  Attributes:
    hidden: [B, T, D] text hidden states after the final norm.
    logits: [B, T, V] float32.
    text_pos: [B, T] int32 text position ids after the last layer (the
      input ids unless "reindex").
    kept_indices: one [B, k_s] int32 array per drop: the surviving vision
      tokens as indices into the original Nv, sorted ascending.
    vision_counts: static; vision tokens present in each layer.
  """

  hidden: PyTree
  logits: PyTree
  text_pos: PyTree
  kept_indices: tuple
  vision_counts: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))


class _Stream(NamedTuple):
  h: Array  # [B, n, D]
  pos: Array  # [B, n] int32, RoPE / causality ids
  order: Array  # [B, n] int32, original ids (sequence order)
  valid: Array  # [B, n] bool
  index: Array | None  # [B, n] int32 into the original Nv (vision only)


@jax.jit(static_argnames=("graphdef", "cfg", "impl"))
def _block_forward(
  params: nnx.State,
  h: Array,
  pos: Array,
  valid: Array,
  *,
  graphdef: nnx.GraphDef,
  cfg: LlamaConfig,
  impl: str,
) -> Array:
  """`LlamaLM.layer` with position-id causal attention and no cache."""
  inv_freq = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
  attend = lambda q, k, v: attention_fn(impl)(q, k, v, pos, pos, valid)
  return block_forward(nnx.merge(graphdef, params), h, pos, inv_freq, attend)


def _check_inputs(
  lm: LlamaLM, x: PrunedInputs, schedule: VisionSchedule
) -> None:
  cfg = lm.cfg
  schedule.check_layers(lm.num_layers)
  if cfg.sliding_window is not None:
    raise ValueError(
      "pruned_forward supports full causal attention only; "
      f"got sliding_window={cfg.sliding_window}"
    )
  if x.text_emb.ndim != 3 or x.text_emb.shape[-1] != cfg.d_model:
    raise ValueError(
      f"text_emb must be [B, T, D={cfg.d_model}]; got "
      f"text_emb.shape={x.text_emb.shape}"
    )
  b, t, d = x.text_emb.shape
  want = dict(
    text_pos=(b, t),
    text_valid=(b, t),
    vision_emb=(b, schedule.num_vision, d),
    vision_pos=(b, schedule.num_vision),
  )
  for name, shape in want.items():
    if getattr(x, name).shape != shape:
      raise ValueError(
        f"{name} must have shape {shape} (B, T from "
        f"text_emb, Nv={schedule.num_vision} from the "
        f"schedule); got {name}.shape="
        f"{getattr(x, name).shape}"
      )
  checks.same_shape(
    ("query_index", "query_valid"), x.query_index, x.query_valid
  )
  if x.query_index.ndim != 2 or x.query_index.shape[0] != b:
    raise ValueError(
      f"query_index must be [B={b}, Q]; got "
      f"query_index.shape={x.query_index.shape}"
    )


def _concat(text: _Stream, vis: _Stream | None) -> _Stream:
  if vis is None:
    return text
  return _Stream(
    *(jnp.concatenate(pair, axis=1) for pair in zip(text[:4], vis[:4])),
    index=None,
  )


def _reindex(
  text: _Stream, vis: _Stream | None
) -> tuple[_Stream, _Stream | None]:
  """New id = number of valid tokens before it in `order` (PyramidDrop)."""
  both = _concat(text, vis)
  perm = jnp.argsort(both.order, axis=1, stable=True)  # [B, N]
  valid = jnp.take_along_axis(both.valid, perm, axis=1).astype(jnp.int32)
  rank = jnp.cumsum(valid, axis=1) - valid  # [B, N] in sorted order
  pos = jnp.take_along_axis(rank, jnp.argsort(perm, axis=1), axis=1)
  t = text.pos.shape[1]
  text = text._replace(pos=pos[:, :t])
  return text, (None if vis is None else vis._replace(pos=pos[:, t:]))


def _initial_streams(x: PrunedInputs) -> tuple[_Stream, _Stream]:
  b, nv = x.vision_pos.shape
  text_pos = x.text_pos.astype(jnp.int32)
  text = _Stream(
    x.text_emb, text_pos, text_pos, x.text_valid.astype(bool), index=None
  )
  vis_pos = x.vision_pos.astype(jnp.int32)
  vis = _Stream(
    x.vision_emb.astype(x.text_emb.dtype),
    vis_pos,
    vis_pos,
    jnp.ones((b, nv), bool),
    jnp.broadcast_to(jnp.arange(nv, dtype=jnp.int32), (b, nv)),
  )
  return text, vis


def _drop(
  lm: LlamaLM,
  score_layer: int,
  buffer: _Stream,
  vis: _Stream,
  x: PrunedInputs,
  keep: int,
  *,
  impl: str,
  selection: str,
) -> _Stream:
  """Scores the vision part of `buffer` with block `score_layer` and
  keeps the top `keep` tokens of `vis`."""
  t = x.text_pos.shape[1]
  scores = importance_scores(
    lm.layers[score_layer],
    buffer.h,
    buffer.pos,
    buffer.valid,
    x.query_index.astype(jnp.int32),
    x.query_valid.astype(bool),
    span_start=t,
    span_len=vis.h.shape[1],
    inv_freq=lm._inv_freq(),
    impl=impl,
    stop_gradient=selection == "hard",
  )  # [B, k]
  idx = topk_indices(scores, keep)  # [B, keep]
  vis = _Stream(
    jnp.take_along_axis(vis.h, idx[..., None], axis=1),
    *(jnp.take_along_axis(a, idx, axis=1) for a in vis[1:]),
  )
  if selection == "soft":
    # Forward value exactly h (m - sg(m) == 0); the gradient reaches the
    # scoring path through the straight-through mask.
    m = jnp.take_along_axis(
      straight_through_topk_mask(scores, keep), idx, axis=1
    )  # [B, keep]
    m = m - jax.lax.stop_gradient(m)
    vis = vis._replace(h=vis.h + vis.h * m[..., None].astype(vis.h.dtype))
  return vis


def pruned_forward(
  lm: LlamaLM,
  inputs: PrunedInputs,
  schedule: VisionSchedule,
  *,
  impl: str = "xla",
  selection: str = "hard",
) -> PrunedOutput:
  """Prefill / training forward with the schedule's vision-token pruning.

  Jittable (close over `schedule` and the static keywords) and
  differentiable w.r.t. the LM parameters; with `selection="hard"` no
  gradient crosses the selection (as released).

  Args:
    lm: the decoder (full causal attention, no sliding window).
    inputs: text and vision streams (`PrunedInputs`).
    schedule: vision tokens per layer; its L must equal `lm.num_layers`.
    impl: "xla" (reference attention and scores) or "pallas" (kernels).
    selection: "hard" (top-k under stop-gradient) or "soft" (same kept
      set; kept hidden states are multiplied by a straight-through soft
      top-k mask: 1 forward, its gradient backward).

  Returns:
    A `PrunedOutput`.

  Raises:
    ValueError: on shapes that disagree with the model or the schedule.
  """
  checks.one_of("impl", impl, IMPLS)
  checks.one_of("selection", selection, SELECTIONS)
  _check_inputs(lm, inputs, schedule)
  keep, num_layers = schedule.keep, schedule.num_layers
  split = [nnx.split(block) for block in lm.layers]
  text, injected = _initial_streams(inputs)
  vis, kept = None, []
  for l in range(num_layers):
    if vis is None and keep[l]:
      vis = injected
    buffer = _concat(text, vis)
    graphdef, params = split[l]
    h = _block_forward(
      params,
      buffer.h,
      buffer.pos,
      buffer.valid,
      graphdef=graphdef,
      cfg=lm.cfg,
      impl=impl,
    )
    t = text.h.shape[1]
    text = text._replace(h=h[:, :t])
    if vis is None:
      continue
    vis = vis._replace(h=h[:, t:])
    after = keep[l + 1] if l + 1 < num_layers else 0
    if 0 < after < keep[l]:
      if schedule.score_layer == "next":
        scored, score_layer = _concat(text, vis), l + 1
      else:
        scored, score_layer = buffer, l
      vis = _drop(
        lm,
        score_layer,
        scored,
        vis,
        inputs,
        after,
        impl=impl,
        selection=selection,
      )
      kept.append(vis.index)
    elif after == 0:
      vis = None
    if (
      schedule.position_mode == "reindex"
      and after < keep[l]
      and l + 1 < num_layers
    ):
      text, vis = _reindex(text, vis)
  hidden = lm.final_norm(text.h)
  return PrunedOutput(
    hidden=hidden,
    logits=lm.lm_head(hidden),
    text_pos=text.pos,
    kept_indices=tuple(kept),
    vision_counts=keep,
  )
