"""LYNX pipeline stages: rollouts, labelled events, the per-seed probe and
rule, online evaluation.

Spec `llm_exits.md` §2. Every generation call runs `batch` rows padded to a
fixed width per problem set, so each stage compiles once.

Axes: n events, F features, Q problems.
"""

import dataclasses
import time
import types
import warnings

import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.lynx.configs import Config
from experiments.lynx.models import LM
from jaxexit import answers
from jaxexit.decoding.full import generate_full
from jaxexit.methods import lynx_conformal
from jaxexit.methods.lynx_decode import LynxConfig, generate_lynx
from jaxexit.methods.lynx_labels import (
  event_features,
  forced_exit_labels,
  padded_chunks,
  padded_rows,
  rollout_events,
)
from jaxexit.methods.lynx_probe import LynxProbe, ProbeReport, train_probe


@dataclasses.dataclass(frozen=True)
class Rollouts:
  """Full greedy traces of Q problems (the baseline).

  Attributes:
    prompts: Q prompt id lists.
    traces: Q continuations, cut after EOS (kept) or at `max_reason`.
    golds, graders: the reference answers and how to grade them.
    correct: [Q] bool the full trace's answer is right.
  """

  prompts: list[list[int]]
  traces: list[list[int]]
  golds: list[str]
  graders: list[str]
  correct: np.ndarray

  @property
  def tokens(self) -> np.ndarray:
    """[Q] generated tokens per problem."""
    return np.array([len(t) for t in self.traces])


def rollout(lm: LM, problems, cfg: Config) -> Rollouts:
  """Greedy full traces (≤ `max_reason` tokens, to EOS)."""
  prompts = [lm.prompt_ids(p.question) for p in problems]
  ids, lengths = padded_rows(prompts)
  traces: list[list[int]] = []
  for idx, real in padded_chunks(len(prompts), cfg.batch):
    out = np.asarray(
      generate_full(
        lm.model,
        ids[idx],
        lengths[idx],
        max_new_tokens=cfg.max_reason,
        eos_id=lm.eos_id,
      )
    )
    for row in out[:real]:
      row = row.tolist()
      if lm.eos_id in row:
        row = row[: row.index(lm.eos_id) + 1]
      traces.append(row)
  golds = [p.answer for p in problems]
  graders = [p.grader for p in problems]
  correct = np.array(
    [
      answers.is_correct(lm.decode(t), g, k)
      for t, g, k in zip(traces, golds, graders)
    ]
  )
  return Rollouts(prompts, traces, golds, graders, correct)


@dataclasses.dataclass(frozen=True)
class Events:
  """Labelled cue events of a set of rollouts.

  Attributes:
    problem: [n] the rollout each event belongs to.
    index: [n] continuation index of the cue token.
    synthetic: [n] the 70 % event of a cue-free trace.
    features: [n, F] hidden states of the feature layers there.
    labels: [n] 1 when a forced exit there answers correctly.
    cue_traces: rollouts with at least one real cue event.
  """

  problem: np.ndarray
  index: np.ndarray
  synthetic: np.ndarray
  features: np.ndarray
  labels: np.ndarray
  cue_traces: int

  def subset(self, keep: np.ndarray) -> "Events":
    keep = np.asarray(keep, bool)
    return dataclasses.replace(
      self,
      problem=self.problem[keep],
      index=self.index[keep],
      synthetic=self.synthetic[keep],
      features=self.features[keep],
      labels=self.labels[keep],
    )


def label_events(
  lm: LM,
  ro: Rollouts,
  layers: tuple[int, ...],
  cfg: Config,
  *,
  synthetic: bool,
) -> Events:
  """Events (real cues; with `synthetic`, the 70 % event of cue-free
  traces too), their features and forced-exit labels."""
  found = [
    rollout_events([lm.decode_token(t) for t in trace], synthetic=synthetic)
    for trace in ro.traces
  ]
  events = [e for e, _ in found]
  width = max(len(p) for p in ro.prompts) + cfg.max_reason
  feats = event_features(
    lm.model,
    ro.prompts,
    ro.traces,
    events,
    layers,
    batch=cfg.batch,
    width=width,
  )
  labels, _ = forced_exit_labels(
    lm.model,
    ro.prompts,
    ro.traces,
    events,
    exit_ids=lm.exit_ids,
    answer_len=cfg.answer_len,
    decode=lm.decode,
    golds=ro.golds,
    graders=ro.graders,
    exit_text=lm.exit_text,
    batch=cfg.batch,
    width=width + len(lm.exit_ids),
  )
  num_f = len(layers) * lm.model.d_model
  return Events(
    problem=np.array([r for r, e in enumerate(events) for _ in e], np.int64),
    index=np.array([i for e in events for i in e], np.int64),
    synthetic=np.array([s for e, s in found for _ in e], bool),
    features=np.concatenate([f.reshape(-1, num_f) for f in feats]),
    labels=np.concatenate([np.asarray(y, np.int32) for y in labels]),
    cue_traces=sum(1 for e, s in found if e and not s),
  )


@dataclasses.dataclass(frozen=True)
class SeedFit:
  """One seed's probe, its calibration events and their p̂.

  `note` says why the probe was not trained (its training events hold one
  class only: then it is untrained and the rule refuses to exit)."""

  probe: LynxProbe
  report: ProbeReport
  p_cal: np.ndarray
  y_cal: np.ndarray
  train_events: int
  note: str | None = None


def fit_seed(
  events: Events, num_problems: int, layers: tuple[int, ...], seed: int
) -> SeedFit:
  """Probe on the events of a random half of the problems, p̂ on the
  other half's (the calibration events)."""
  rng = np.random.default_rng(seed)
  train_problems = rng.permutation(num_problems)[: num_problems // 2]
  is_train = np.isin(events.problem, train_problems)
  tr, cal = events.subset(is_train), events.subset(~is_train)
  counts = np.bincount(tr.labels, minlength=2)
  note = None
  if counts.min() < 2:
    note = (
      f"probe not trained: its {len(tr.labels)} training events hold "
      f"{counts[0]} wrong and {counts[1]} right forced exits"
    )
    probe = LynxProbe(events.features.shape[1], layers, rngs=nnx.Rngs(seed))
    report = ProbeReport(float("nan"), float("nan"), 0, 0)
  else:
    probe, report = train_probe(tr.features, tr.labels, layers, seed=seed)
  p_cal = np.asarray(probe(jnp.asarray(cal.features)))
  return SeedFit(probe, report, p_cal, cal.labels, int(is_train.sum()), note)


@dataclasses.dataclass(frozen=True)
class Online:
  """One online LYNX evaluation of a problem set."""

  out: types.SimpleNamespace  # `LynxOutput`'s fields as numpy arrays
  correct: np.ndarray  # [Q] bool
  seconds: float


def lynx_config(lm: LM, cfg: Config, layers) -> LynxConfig:
  return LynxConfig(
    feature_layers=tuple(layers),
    exit_ids=lm.exit_ids,
    stop_ids=lm.stop_ids,
    max_reason=cfg.max_reason,
    answer_len=cfg.answer_len,
    eos_id=lm.eos_id,
  )


def run_online(
  lm: LM,
  probe: LynxProbe,
  rule: lynx_conformal.ConformalExit,
  ro: Rollouts,
  lcfg: LynxConfig,
  *,
  slots: int | None = None,
) -> Online:
  """LYNX decided inside the decoding loop over every problem of `ro`."""
  ids, lengths = padded_rows(ro.prompts)
  t0 = time.perf_counter()
  out = generate_lynx(
    lm.model, probe, rule, lm.detector, ids, lengths, lcfg, slots=slots
  )
  # On the host: the same fields as numpy arrays.
  out = types.SimpleNamespace(
    **{
      f.name: np.asarray(getattr(out, f.name)) for f in dataclasses.fields(out)
    }
  )
  seconds = time.perf_counter() - t0
  correct = np.array(
    [
      answers.is_correct(lm.decode(out.tokens[i, : out.length[i]]), g, k)
      for i, (g, k) in enumerate(zip(ro.golds, ro.graders))
    ]
  )
  return Online(out, correct, seconds)


def calibrated_rule(fit: SeedFit, delta: float):
  """(rule, its warning or None), or (a never-exiting rule, the reason)."""
  if fit.note:
    never = lynx_conformal.ConformalExit(np.inf, np.inf, delta, 0, 0)
    return never, f"refused: {fit.note}"
  try:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      rule = lynx_conformal.calibrate(fit.p_cal, fit.y_cal, delta)
    note = str(caught[0].message) if caught else None
    return rule, note
  except ValueError as e:
    never = lynx_conformal.ConformalExit(np.inf, np.inf, delta, 0, 0)
    return never, f"refused: {e}"
