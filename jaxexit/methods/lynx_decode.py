"""LYNX online: exits from chain-of-thought decided inside the decoding loop.

Paper: LYNX (Akgül et al., arXiv 2512.05325; spec `llm_exits.md` §2.9).
The official code replays events over finished rollouts; `generate_lynx`
decides them online, greedily, in one `lax.while_loop` with static shapes.
B slots work through a queue of Q problems; each slot is a state machine:

  PROMPT   feed the problem's prompt, one token per step (so a slot can
           take a new problem while the others decode), then
  REASON   feed the last token; when it is a cue token (`CueDetector`),
           the probe reads the features this step computed anyway (the
           hidden states of `feature_layers` at the cue position) and the
           conformal rule decides; on exit the cue's cache slot is reused
           (the cache index rolls back by one: the cue leaves the prefix)
           and the row turns to
  FORCING  teacher-force the pre-tokenised exit cue, then
  ANSWERING greedy-decode ≤ K answer tokens until `stop_ids` (e.g. "}" or
           EOS), then
  DONE     take the next queued problem (slot refill: tokens saved become
           throughput) or, with the queue empty, idle (cache writes
           masked). A new problem overwrites the slot's cache from
           position 0 on; attention reads only positions ≤ the query's,
           which are all rewritten by then.

A row that reaches EOS or `max_reason` tokens without exiting keeps its
full trace. `lynx_replay.replay_lynx` is the offline reference (the official
procedure): the full greedy trace, events by `reference_events`, features
from one teacher-forced pass, the first exiting event, a greedy completion
of the truncated prompt. Tests check that the two agree token for token
and decision for decision.

Features follow Hugging Face's `hidden_states` numbering: 0 = the
embeddings, i = the output of block i, L = the last block's output after
the final norm.

Axes: B slots, Q queued problems, T prompt, N = max_reason + len(exit
cue) + K tokens, F features, D width.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxexit import checks
from jaxexit.decoding.inputs import check_inputs
from jaxexit.methods import lynx_conformal
from jaxexit.methods.lynx_cues import CueDetector, CueState
from jaxexit.methods.lynx_probe import LynxProbe
from jaxexit.typing import Array, Bool, Float, Int

PROMPT, REASON, FORCING, ANSWERING, DONE = 0, 1, 2, 3, 4


@dataclasses.dataclass(frozen=True)
class LynxConfig:
  """Static settings of a LYNX run.

  Attributes:
    feature_layers: hidden-state indices (0 = embeddings, L = final norm).
    exit_ids: the exit cue, pre-tokenised (e.g. `</think> Final Answer:
      \\boxed{`).
    stop_ids: answer tokens that end a row (e.g. "}" and EOS).
    max_reason: reasoning tokens at most (the first from the prefill).
    answer_len: K, answer tokens at most after the exit cue.
    eos_id: ends a reasoning trace (None: never).
  """

  feature_layers: tuple[int, ...]
  exit_ids: tuple[int, ...]
  stop_ids: tuple[int, ...]
  max_reason: int
  answer_len: int
  eos_id: int | None = None

  def __post_init__(self):
    for name in ("feature_layers", "exit_ids", "stop_ids"):
      if not getattr(self, name):
        raise ValueError(f"LynxConfig.{name} must not be empty")
    checks.positive_int("LynxConfig.max_reason", self.max_reason)
    checks.positive_int("LynxConfig.answer_len", self.answer_len)

  @property
  def max_tokens(self) -> int:
    """N: the longest continuation a row can produce."""
    return self.max_reason + len(self.exit_ids) + self.answer_len


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LynxOutput:
  """Continuations after the prompt and the exit decisions.

  One row per queued problem (B in the annotations below is Q).

  Attributes:
    tokens: [B, N] the continuation (prompt + tokens[:length] is the final
      context; an exited row holds reasoning, exit cue, answer).
    length: [B] tokens of the continuation.
    exited: [B] the row exited early.
    exit_event: [B] continuation index of the cue token that exited (-1).
    events: [B, N] bool, a cue event was evaluated at this continuation
      index.
    p_hat: [B, N] the probe's output at evaluated events (0 elsewhere).
  """

  tokens: Int[Array, "B N"]
  length: Int[Array, "B"]
  exited: Bool[Array, "B"]
  exit_event: Int[Array, "B"]
  events: Bool[Array, "B N"]
  p_hat: Float[Array, "B N"]


def _forward(backbone, tokens, positions, valid, caches, layers):
  """Logits [B, T, V], features [B, T, F] and caches."""
  h = backbone.embed(tokens)
  kept = {0: h} if 0 in layers else {}
  caches = list(caches)
  last = backbone.num_layers
  for i in range(last):
    h, caches[i] = backbone.layer(i, h, caches[i], positions, valid)
    if i + 1 in layers and i + 1 < last:
      kept[i + 1] = h
  normed = backbone.final_norm(h)
  if last in layers:
    kept[last] = normed
  feats = jnp.concatenate([kept[i] for i in layers], axis=-1)
  return backbone.lm_head(normed), feats, tuple(caches)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Slots:
  """The loop carry: B slots working through a queue of Q problems."""

  problem: Int[Array, "B"]  # the queue index a slot works on
  token: Int[Array, "B"]  # the token fed at `pos` this step
  pos: Int[Array, "B"]
  mode: Int[Array, "B"]
  cue: Bool[Array, "B"]  # `token` completes a cue
  forced: Int[Array, "B"]  # exit-cue tokens fed so far
  answered: Int[Array, "B"]
  reasoned: Int[Array, "B"]  # reasoning tokens in the continuation
  next_problem: Int[Array, ""]
  detector: CueState
  caches: tuple
  out: LynxOutput  # [Q, ...]


@functools.partial(
  jax.jit, static_argnames=("graphdefs", "cfg", "detector", "slots")
)
def _generate(
  graphdefs, params, prompts, lengths, q0, q1, *, cfg, detector, slots
):
  backbone, probe = (nnx.merge(g, p) for g, p in zip(graphdefs, params))
  queue, prompt_len = prompts.shape
  n_max = cfg.max_tokens
  rows = jnp.arange(slots)
  exit_ids = jnp.asarray(cfg.exit_ids, jnp.int32)
  stop_ids = jnp.asarray(cfg.stop_ids, jnp.int32)
  eos = -1 if cfg.eos_id is None else cfg.eos_id
  rule = lynx_conformal.ConformalExit(q0, q1, 0.0, 0, 0)
  zeros = jnp.zeros((slots,), jnp.int32)
  fresh = detector.init(slots)
  first_problem = jnp.minimum(rows, queue - 1)
  out = LynxOutput(
    tokens=jnp.zeros((queue, n_max), jnp.int32),
    length=jnp.zeros((queue,), jnp.int32),
    exited=jnp.zeros((queue,), bool),
    exit_event=jnp.full((queue,), -1, jnp.int32),
    events=jnp.zeros((queue, n_max), bool),
    p_hat=jnp.zeros((queue, n_max), jnp.float32),
  )
  state = _Slots(
    problem=first_problem,
    token=prompts[first_problem, 0],
    pos=zeros,
    mode=jnp.where(rows < queue, PROMPT, DONE),
    cue=jnp.zeros((slots,), bool),
    forced=zeros,
    answered=zeros,
    reasoned=zeros,
    next_problem=jnp.int32(min(slots, queue)),
    detector=fresh,
    caches=backbone.init_cache(slots, prompt_len + n_max),
    out=out,
  )

  def cond(r):
    return jnp.any(r.mode != DONE)

  def body(r):
    live = r.mode != DONE
    logits, feats, caches = _forward(
      backbone,
      r.token[:, None],
      r.pos[:, None],
      live[:, None],
      r.caches,
      cfg.feature_layers,
    )
    greedy = jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32)
    length = lengths[r.problem]
    idx = r.pos - length  # continuation index of the fed token
    in_prompt = r.mode == PROMPT
    last_prompt = in_prompt & (r.pos == length - 1)
    # REASON at a cue: the probe and the rule.
    check = (r.mode == REASON) & r.cue & live
    p = probe(feats[:, 0])
    go = check & lynx_conformal.exits(rule, p)
    o = r.out

    def put(a, i, v, m):
      i = jnp.clip(i, 0, n_max - 1)
      return a.at[r.problem, i].set(jnp.where(m, v, a[r.problem, i]))

    o = dataclasses.replace(
      o,
      events=put(o.events, idx, True, check),
      p_hat=put(o.p_hat, idx, p, check),
      exited=o.exited.at[r.problem].set(o.exited[r.problem] | go),
      exit_event=o.exit_event.at[r.problem].set(
        jnp.where(go, idx, o.exit_event[r.problem])
      ),
    )
    # The next token and where it goes.
    in_force = (r.mode == FORCING) | go
    forced = jnp.where(go, 0, r.forced)
    more_cue = forced + 1 < len(cfg.exit_ids)
    cue_next = exit_ids[jnp.minimum(forced + 1, len(cfg.exit_ids) - 1)]
    nxt = jnp.where(in_force & more_cue, cue_next, greedy)
    nxt = jnp.where(go, exit_ids[0], nxt)
    next_prompt = prompts[r.problem, jnp.minimum(r.pos + 1, prompt_len - 1)]
    nxt = jnp.where(in_prompt & ~last_prompt, next_prompt, nxt)
    pos = jnp.where(go, r.pos, r.pos + 1)  # exit: reuse the cue's slot
    mode = jnp.where(go, FORCING, r.mode)
    mode = jnp.where(last_prompt, REASON, mode)
    forced = jnp.where(in_force & ~go, forced + 1, forced)
    mode = jnp.where((r.mode == FORCING) & ~more_cue, ANSWERING, mode)
    answering = (r.mode == ANSWERING) | ((r.mode == FORCING) & ~more_cue)
    answered = r.answered + answering.astype(jnp.int32)
    stop = jnp.any(nxt[:, None] == stop_ids[None, :], axis=1)
    end_answer = (mode == ANSWERING) & (stop | (answered >= cfg.answer_len))
    reasoning = (r.mode == REASON) | last_prompt
    reasoned = jnp.where(last_prompt, 0, r.reasoned)
    reasoned = reasoned + (reasoning & ~go).astype(jnp.int32)
    end_reason = reasoning & ~go & ((nxt == eos) | (reasoned >= cfg.max_reason))
    done = live & (end_answer | end_reason)
    nidx = pos - length
    write = live & ~(in_prompt & ~last_prompt) & (nidx < n_max)
    o = dataclasses.replace(
      o,
      tokens=put(o.tokens, nidx, nxt, write),
      length=o.length.at[r.problem].set(
        jnp.where(write, nidx + 1, o.length[r.problem])
      ),
    )
    det_in = jax.tree.map(
      lambda f, d: jnp.where(last_prompt[:, None], f, d), fresh, r.detector
    )
    det, cue = detector.step(det_in, nxt)
    # Slot refill: a slot that finished takes the next queued problem.
    rank = jnp.cumsum(done.astype(jnp.int32)) - 1
    new_problem = r.next_problem + rank
    refill = done & (new_problem < queue)
    problem = jnp.where(refill, new_problem, r.problem)
    mode = jnp.where(done, DONE, mode)
    mode = jnp.where(refill, PROMPT, jnp.where(live, mode, DONE))
    reset = lambda new, old: jnp.where(refill, new, old)  # noqa: E731
    return _Slots(
      problem=problem,
      token=reset(prompts[problem, 0], jnp.where(live, nxt, r.token)),
      pos=reset(0, jnp.where(live, pos, r.pos)),
      mode=mode,
      cue=cue & (mode == REASON),
      forced=reset(0, forced),
      answered=reset(0, answered),
      reasoned=reset(0, reasoned),
      next_problem=r.next_problem + jnp.sum(done, dtype=jnp.int32),
      detector=det,
      caches=caches,
      out=o,
    )

  return jax.lax.while_loop(cond, body, state).out


def generate_lynx(
  backbone,
  probe: LynxProbe,
  rule: lynx_conformal.ConformalExit,
  detector: CueDetector,
  prompts,
  lengths,
  cfg: LynxConfig,
  *,
  slots: int | None = None,
) -> LynxOutput:
  """Greedy decoding with LYNX exits decided online (see the module doc).

  Args:
    backbone: a Transformer `DecoderBackbone`.
    probe: trained on `cfg.feature_layers`.
    rule: the calibrated conformal rule.
    detector: the cue detector of the backbone's tokenizer.
    prompts: [Q, T] right-padded prompt ids (the queue).
    lengths: [Q] prompt lengths (≥ 1).
    cfg: static settings.
    slots: B rows decoded together (default Q: one static batch; at most
      Q are used). With B < Q a row that finishes takes the next queued
      problem (its prompt is fed one token per step), so tokens saved
      become throughput.

  Returns:
    A `LynxOutput` with one row per queued problem.

  Raises:
    ValueError: if the probe reads other layers or another width than
      `cfg.feature_layers` give, or slots < 1.
  """
  width = backbone.d_model * len(cfg.feature_layers)
  probe.check_features(cfg.feature_layers, width)
  # The static length N = max_reason + len(exit cue) + K after the
  # longest prompt must fit the backbone (ids in range, ≤ max_position).
  check_inputs(
    backbone, prompts, lengths, max_new_tokens=cfg.max_tokens, eos_id=cfg.eos_id
  )
  prompts = jnp.asarray(prompts, jnp.int32)
  slots = prompts.shape[0] if slots is None else slots
  checks.positive_int("slots", slots)
  # More slots than problems would leave two slots on one problem (their
  # scatters into the output would race): the extra slots have no work.
  slots = min(slots, prompts.shape[0])
  graphdefs, params = zip(*(nnx.split(m) for m in (backbone, probe)))
  return _generate(
    tuple(graphdefs),
    tuple(params),
    prompts,
    jnp.asarray(lengths, jnp.int32),
    jnp.float32(rule.q0),
    jnp.float32(rule.q1),
    cfg=cfg,
    detector=detector,
    slots=slots,
  )


def forward_features(
  backbone, tokens: np.ndarray, layers: tuple[int, ...]
) -> Float[Array, "B T F"]:
  """Teacher-forced features of whole sequences [B, T] (one pass)."""
  tokens = jnp.asarray(tokens, jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  _, feats, _ = _forward(
    backbone,
    tokens,
    positions,
    jnp.ones(tokens.shape, bool),
    backbone.init_cache(tokens.shape[0], tokens.shape[1]),
    layers,
  )
  return feats
