# Over 400 lines: one decode step (segments, rule, projection, fill).
"""One early-exit decode step: segments, exit decisions, skipped-block state.

Spec: `llm_exits.md` §1.1–1.2 (missing state, CALM's segments), §5.1–5.2
(CALM, EE-LLM), §8 pitfalls 1–5. The engine (`engine.generate`) calls
`DecodeStep` once per generated token inside its `lax.while_loop`.

The step feeds the previous token through *segments* of blocks (before the
first exit, between exits, up to L). Segment 0 always runs; segment k ≥ 1
runs under its own `lax.cond` while no exit so far was confident, and the
cond's operands are that segment's caches only, so a skipped segment's
caches are neither read nor copied (a `lax.switch` over segments would carry
every cache through every branch). Blocks are really skipped at batch 1;
with batch > 1 the rule is batch-synchronous (CALM): the batch stops when
every unfinished row's rule says exit.

The rule (`jaxexit.decoding.rules`) declares what it reads. An exit's
vocabulary projection is computed only when the rule reads `logits`;
otherwise the projection runs once, after the segments, at the exit taken,
to emit its token (one projection of a 576 × 49152 head costs ~8 SmolLM2
blocks).

Afterwards the skipped blocks get their state for later tokens
(`DecodeConfig.state_mode`), one `lax.cond` per segment over its own caches:
`propagate` writes each skipped block's KV (or Mamba state) from the exit
hidden state, `freeze` masks them, `oracle` never skips (every segment
runs; the first confident exit's token is emitted), `recompute` keeps the
last `pending` positions in a window with the depth each reached and runs
each segment on the window plus the current token, only the positions that
still lack the segment valid (a token that goes deeper catches earlier
early-exited positions up exactly); a full-depth pass is forced before an
incomplete position leaves the window.

Axes: B batch, P pending window, W = P + 1 (1 outside `recompute`), D
width, V vocabulary.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jaxexit.decoding.config import DecodeConfig
from jaxexit.decoding.rules import exit_measure, final_confidence
from jaxexit.exits import ExitHeadOutput, ExitRule
from jaxexit.typing import Array, Bool, Float, Int, PyTree


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class StepState:
  """What decode steps carry from token to token.

  Attributes:
    caches: one cache per block (`DecoderBackbone.init_cache`).
    hstates: one exit-head state per exit (`DecoderExitHeads.init_state`).
    pend_h: [B, P, D] hidden states of the pending window (`recompute`;
      P = 0 otherwise), at the depth `pend_depth` says.
    pend_depth: [B, P] int32 segments each pending position has been
      through (S = complete).
  """

  caches: tuple
  hstates: tuple
  pend_h: Float[Array, "B P D"]
  pend_depth: Int[Array, "B P"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class StepResult:
  """The exit one decode step took and what it cost, per row.

  Attributes:
    logits: [B, V] float32 next-token logits at the exit taken.
    confidence: [B] float32 the rule's `measure` at that exit (0 for rules
      without one; 1 at the final layer for rules that read `score`).
    exit_layer: [B] int32 blocks whose output produced the token.
    segments_run: [B] int32 segments run (the last ends in the LM head).
    exit_projections: [B] int32 exit-head vocabulary projections computed.
    scores_computed: [B] int32 exit-head `score` evaluations.
    layers_computed: [B] int32 block applications (one block on one
      position counts 1; `recompute` catch-up included).
    layers_propagated: [B] int32 skipped blocks filled by `propagate`.
  """

  logits: Float[Array, "B V"]
  confidence: Float[Array, "B"]
  exit_layer: Int[Array, "B"]
  segments_run: Int[Array, "B"]
  exit_projections: Int[Array, "B"]
  scores_computed: Int[Array, "B"]
  layers_computed: Int[Array, "B"]
  layers_propagated: Int[Array, "B"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Walk:
  """The carry of the segment chain within one step (all but the caches).

  `taken` is the exit whose token is emitted so far (the deepest segment
  reached before a confident exit); `emit_*` hold what it needs.
  """

  h: Float[Array, "B W D"]
  depth: Int[Array, "B P"]
  computed: Int[Array, "B"]
  rule_state: PyTree
  found: Bool[Array, ""]
  taken: Int[Array, ""]
  segments: Int[Array, ""]
  projections: Int[Array, ""]
  scores: Int[Array, ""]
  emit_logits: Float[Array, "B V"]
  emit_conf: Float[Array, "B"]
  emit_h: Float[Array, "B 1 D"]


@dataclasses.dataclass(frozen=True)
class DecodeStep:
  """`step(token, pos, row_valid, state) -> (state, StepResult)`.

  Built inside the engine's `jit` (it holds the merged modules).

  Attributes:
    backbone: a `DecoderBackbone`.
    heads: its `DecoderExitHeads`.
    config: the static settings.
    bounds: segment edges (0, e_1, …, L).
    rule: the resolved `ExitRule` (λ may be traced).
  """

  backbone: object
  heads: object
  config: DecodeConfig
  bounds: tuple[int, ...]
  rule: ExitRule

  @property
  def num_segments(self) -> int:
    return len(self.bounds) - 1

  @property
  def _reads_logits(self) -> bool:
    return self.config.exits_enabled and "logits" in self.rule.reads

  @property
  def _reads_score(self) -> bool:
    return self.config.exits_enabled and "score" in self.rule.reads

  def __call__(
    self,
    token: Int[Array, "B"],
    pos: Int[Array, "B"],
    row_valid: Bool[Array, "B"],
    state: StepState,
  ) -> tuple[StepState, StepResult]:
    bb, num_seg = self.backbone, self.num_segments
    width = state.pend_h.shape[1] + 1
    # Window slots before the sequence start are inactive; clamping them to
    # 0 keeps their (no-op) cache writes off the current token's slot.
    positions = jnp.maximum(pos[:, None] + jnp.arange(1 - width, 1)[None], 0)
    h = jnp.concatenate([state.pend_h, bb.embed(token[:, None])], axis=1)
    batch = h.shape[0]
    if self.config.state_mode == "recompute":
      # The oldest window slot leaves now: it must be complete.
      force = jnp.any(row_valid & (state.pend_depth[:, 0] < num_seg))
    else:
      force = jnp.array(False)
    zero = jnp.int32(0)
    walk = _Walk(
      h=h,
      depth=state.pend_depth,
      computed=jnp.zeros((batch,), jnp.int32),
      rule_state=self.rule.init(batch, None),
      found=jnp.array(False),
      taken=zero,
      segments=zero,
      projections=zero,
      scores=zero,
      emit_logits=jnp.zeros((batch, bb.vocab_size), jnp.float32),
      emit_conf=jnp.zeros((batch,), jnp.float32),
      emit_h=h[:, -1:],
    )
    caches, hstates = list(state.caches), list(state.hstates)
    pre = list(hstates)  # each exit's head state before the current token
    run = functools.partial(
      self._segment, positions=positions, row_valid=row_valid, force=force
    )
    oracle = self.config.state_mode == "oracle"
    for k in range(num_seg):
      lo, hi = self.bounds[k], self.bounds[k + 1]
      head = k < num_seg - 1
      operands = (
        walk,
        tuple(caches[lo:hi]),
        hstates[k] if head else (),
        pre[k] if head else (),
      )
      if k == 0 or oracle:
        out = run(k, *operands)
      else:
        out = jax.lax.cond(
          walk.found, lambda *ops: ops, functools.partial(run, k), *operands
        )
      walk, caches[lo:hi] = out[0], list(out[1])
      if head:
        hstates[k], pre[k] = out[2], out[3]
    logits, projections = walk.emit_logits, walk.projections
    if self.config.exits_enabled and not self._reads_logits:
      logits, projections = self._project_taken(
        walk, tuple(pre), positions[:, -1:], row_valid[:, None]
      )
    last_run = walk.segments - 1
    caches, hstates, propagated = self._fill_skipped(
      last_run, walk.h[:, -1:], caches, hstates, positions, row_valid
    )
    pend_h, pend_depth = state.pend_h, state.pend_depth
    if self.config.state_mode == "recompute":
      new_depth = jnp.where(row_valid, walk.segments, num_seg)
      pend_h = walk.h[:, 1:]
      pend_depth = jnp.concatenate(
        [walk.depth[:, 1:], new_depth[:, None]], axis=1
      )
    rows = jnp.zeros((batch,), jnp.int32)
    result = StepResult(
      logits=logits,
      confidence=walk.emit_conf,
      exit_layer=rows + jnp.asarray(self.bounds)[walk.taken + 1],
      segments_run=rows + walk.segments,
      exit_projections=rows + projections,
      scores_computed=rows + walk.scores,
      layers_computed=walk.computed,
      layers_propagated=propagated,
    )
    new_state = StepState(tuple(caches), tuple(hstates), pend_h, pend_depth)
    return new_state, result

  def _segment(
    self, k, walk, seg_caches, hstate, pre, *, positions, row_valid, force
  ):
    """Runs segment `k` on the window, then its exit's rule."""
    active = jnp.concatenate([walk.depth <= k, row_valid[:, None]], axis=1)

    def run(h, seg_caches, hstate, positions, active):
      h_out, seg_caches = self._blocks(k, h, seg_caches, positions, active)
      h_out = jnp.where(active[..., None], h_out, h)
      hstate, pre, logits, score = self._exit_outputs(
        k, h_out, hstate, positions, active
      )
      return h_out, seg_caches, hstate, pre, logits, score

    def current_only(h, seg_caches, hstate):
      h_cur, *rest = run(
        h[:, -1:], seg_caches, hstate, positions[:, -1:], active[:, -1:]
      )
      return h.at[:, -1:].set(h_cur), *rest

    whole = functools.partial(run, positions=positions, active=active)
    if walk.h.shape[1] == 1:
      h_out, seg_caches, hstate, new_pre, logits, score = whole(
        walk.h, seg_caches, hstate
      )
    else:  # recompute: the window only when some position lacks segment k
      h_out, seg_caches, hstate, new_pre, logits, score = jax.lax.cond(
        jnp.any(active[:, :-1]),
        whole,
        current_only,
        walk.h,
        seg_caches,
        hstate,
      )
    if k < self.num_segments - 1:
      pre = new_pre
    lo, hi = self.bounds[k], self.bounds[k + 1]
    walk = self._decide(
      k,
      walk,
      h_out,
      logits,
      score,
      row_valid,
      force,
      computed=(hi - lo) * jnp.sum(active, axis=1, dtype=jnp.int32),
    )
    return walk, seg_caches, hstate, pre

  def _blocks(self, k, h, seg_caches, positions, active):
    seg_caches = list(seg_caches)
    lo, hi = self.bounds[k], self.bounds[k + 1]
    for i in range(lo, hi):
      h, seg_caches[i - lo] = self.backbone.layer(
        i, h, seg_caches[i - lo], positions, active
      )
    return h, tuple(seg_caches)

  def _exit_outputs(self, k, h, hstate, positions, active):
    """(head state, head state before the current token, logits, score).

    The window's earlier positions only advance the head state; logits and
    score are for the current (last) position, and only where needed.
    """
    bb, heads = self.backbone, self.heads
    if k == self.num_segments - 1:
      return hstate, hstate, bb.lm_head(bb.final_norm(h[:, -1:]))[:, 0], None
    if h.shape[1] > 1:
      hstate = heads.advance(
        bb, k, h[:, :-1], hstate, positions[:, :-1], active[:, :-1]
      )
    pre, cur = hstate, (h[:, -1:], positions[:, -1:], active[:, -1:])
    logits = score = None
    if self._reads_logits:
      logits, hstate = heads(bb, k, cur[0], hstate, cur[1], cur[2])
      logits = logits[:, 0]
    else:
      hstate = heads.advance(bb, k, cur[0], hstate, cur[1], cur[2])
    if self._reads_score:
      score = heads.score(bb, k, cur[0])[:, 0]
    return hstate, pre, logits, score

  def _decide(self, k, walk, h_out, logits, score, row_valid, force, computed):
    """Applies the rule at exit `k` (the final layer always exits)."""
    final = k == self.num_segments - 1
    head_out = ExitHeadOutput(
      logits=logits,
      score=score,
      extra={"h_in": walk.h[:, -1], "h_out": h_out[:, -1]},
    )
    frontier = ~walk.found  # no earlier exit was confident: emit this one
    rule_state = walk.rule_state
    if final:
      confident = jnp.array(True)
      conf = final_confidence(self.rule, logits, head_out.extra)
    elif self.config.exits_enabled:
      rule_state, exit_now = self.rule.update(rule_state, head_out, k)
      exit_now = jnp.asarray(exit_now, bool)
      confident = ~force & jnp.all(exit_now | ~row_valid)
      conf = exit_measure(self.rule, head_out, h_out.shape[0])
    else:
      confident, conf = jnp.array(False), walk.emit_conf
    pick = lambda new, old: jnp.where(frontier, new, old)
    emit_logits = walk.emit_logits if logits is None else logits
    add = lambda n, on: n + jnp.int32(on)
    return _Walk(
      h=h_out,
      depth=jnp.where(walk.depth <= k, k + 1, walk.depth),
      computed=walk.computed + computed,
      rule_state=rule_state,
      found=walk.found | confident,
      taken=pick(jnp.int32(k), walk.taken),
      segments=walk.segments + 1,
      projections=add(walk.projections, logits is not None and not final),
      scores=add(walk.scores, score is not None),
      emit_logits=pick(emit_logits, walk.emit_logits),
      emit_conf=pick(conf, walk.emit_conf),
      emit_h=pick(h_out[:, -1:], walk.emit_h),
    )

  def _project_taken(self, walk, pre, positions, valid):
    """Logits at the exit taken, for rules that did not read them."""
    bb, heads, last = self.backbone, self.heads, self.num_segments - 1

    def project(k):
      def fn(emit_h, pre):
        return heads(bb, k, emit_h, pre[k], positions, valid)[0][:, 0]

      return fn

    def at_exit(emit_h, pre):
      return jax.lax.switch(
        walk.taken, [project(k) for k in range(last)], emit_h, pre
      )

    early = walk.taken < last
    logits = jax.lax.cond(
      early, at_exit, lambda *_: walk.emit_logits, walk.emit_h, pre
    )
    return logits, walk.projections + early.astype(jnp.int32)

  def _fill_skipped(self, last_run, h_exit, caches, hstates, positions, valid):
    """State for the blocks (and heads) after segment `last_run` (§1.1)."""
    batch = h_exit.shape[0]
    propagated = jnp.zeros((batch,), jnp.int32)
    mode = self.config.state_mode
    if mode not in ("propagate", "freeze"):
      return caches, hstates, propagated
    bb, heads = self.backbone, self.heads
    pos, ok = positions[:, -1:], valid[:, None]

    def fill(k, seg_caches, hstate):
      lo, seg_caches = self.bounds[k], list(seg_caches)
      for i in range(lo, self.bounds[k + 1]):
        c = seg_caches[i - lo]
        if mode == "propagate":
          seg_caches[i - lo] = bb.propagate(i, h_exit, c, pos, ok)
        else:
          seg_caches[i - lo] = bb.freeze(i, c, pos, ok)
      if mode == "propagate" and k < self.num_segments - 1:
        hstate = heads.advance(bb, k, h_exit, hstate, pos, ok)
      return tuple(seg_caches), hstate

    caches, hstates = list(caches), list(hstates)
    for k in range(1, self.num_segments):
      lo, hi = self.bounds[k], self.bounds[k + 1]
      head = k < self.num_segments - 1
      seg_caches, hstate = jax.lax.cond(
        last_run < k,
        functools.partial(fill, k),
        lambda c, s: (c, s),
        tuple(caches[lo:hi]),
        hstates[k] if head else (),
      )
      caches[lo:hi] = list(seg_caches)
      if head:
        hstates[k] = hstate
    if mode == "propagate":
      propagated += self.bounds[-1] - jnp.asarray(self.bounds)[last_run + 1]
    return tuple(caches), tuple(hstates), propagated
