"""LYNX training data: events, features and forced-exit labels of rollouts.

Paper: LYNX (Akgül et al., arXiv 2512.05325; spec `llm_exits.md` §2.2–2.4).
For each finished rollout (prompt + reasoning trace):

* `rollout_events`: the cue events (`reference_events`), or, for a trace
  without any cue, one synthetic event at 70 % of its length (training
  and calibration data only);
* `event_features`: the hidden states of the chosen layers at each event's
  cue token, from teacher-forced passes over batches of rollouts
  (`lynx_decode` numbering: 0 = embeddings, L = after the final norm);
* `forced_exit_labels`: truncate the trace before the cue token (the cue
  is dropped), append the pre-tokenised exit cue, greedy-complete up to K
  tokens (the events of many rollouts batched together), grade the completion
  (`jaxexit.answers.is_correct`): y = 1 when a forced exit there answers
  correctly.

Axes: n events, F features.
"""

from collections.abc import Callable, Sequence

import numpy as np

from jaxexit import answers
from jaxexit.decoding.full import generate_full
from jaxexit.methods.lynx_cues import DEFAULT_CUES, reference_events
from jaxexit.methods.lynx_decode import forward_features

SYNTHETIC_AT = 0.7


def rollout_events(
  pieces: Sequence[str],
  cues: Sequence[str] = DEFAULT_CUES,
  *,
  synthetic: bool = True,
) -> tuple[list[int], bool]:
  """(event token indices, whether they are the synthetic one).

  Events at the trace's last token are dropped (no token follows the cue
  there, and online the last token is never fed). A cue-free trace of ≥ 2
  tokens gets one event at ⌊0.7 · length⌋ when `synthetic`.
  """
  events = [e for e in reference_events(pieces, cues) if e < len(pieces) - 1]
  if events or not synthetic or len(pieces) < 2:
    return events, False
  return [min(int(SYNTHETIC_AT * len(pieces)), len(pieces) - 2)], True


def padded_rows(rows: Sequence[Sequence[int]], width: int | None = None):
  """([n, width] right-padded int32 ids, [n] lengths); width defaults to
  the longest row (a fixed width keeps one compiled program)."""
  width = max(len(r) for r in rows) if width is None else width
  if any(len(r) > width for r in rows):
    raise ValueError(
      f"a row of {max(len(r) for r in rows)} tokens exceeds width={width}"
    )
  ids = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    ids[i, : len(r)] = r
  return ids, np.array([len(r) for r in rows], np.int32)


def padded_chunks(n: int, batch: int) -> list[tuple[list[int], int]]:
  """(index list of `batch` rows, how many are real) covering 0..n-1; the
  last chunk repeats its first row so every call keeps the compiled
  batch size."""
  out = []
  for i in range(0, n, batch):
    idx = list(range(i, min(i + batch, n)))
    out.append((idx + [idx[0]] * (batch - len(idx)), len(idx)))
  return out


def event_features(
  backbone,
  prompts: Sequence[Sequence[int]],
  traces: Sequence[Sequence[int]],
  events: Sequence[Sequence[int]],
  layers: tuple[int, ...],
  *,
  batch: int = 32,
  width: int | None = None,
) -> list[np.ndarray]:
  """Per rollout, [n_r, F] features at each event's cue token, from
  teacher-forced passes over `batch` right-padded rollouts at a time
  (padding after a row's end changes none of its causal features)."""
  rows = [[*p, *t] for p, t in zip(prompts, traces)]
  ids, _ = padded_rows(rows, width)
  out = []
  for idx, real in padded_chunks(len(rows), batch):
    feats = np.asarray(forward_features(backbone, ids[idx], layers))
    for j, r in enumerate(idx[:real]):
      at = [len(prompts[r]) + e for e in events[r]]
      out.append(feats[j, at])
  return out


def forced_exit_labels(
  backbone,
  prompts: Sequence[Sequence[int]],
  traces: Sequence[Sequence[int]],
  events: Sequence[Sequence[int]],
  *,
  exit_ids: Sequence[int],
  answer_len: int,
  decode: Callable[[Sequence[int]], str],
  golds: Sequence[str],
  graders: Sequence[str],
  exit_text: str = "",
  batch: int = 32,
  width: int | None = None,
) -> tuple[list[np.ndarray], list[list[str]]]:
  """Per rollout, ([n_r] int labels, [n_r] completions) of forcing an exit
  at each event, greedy-completed `batch` rows at a time.

  Args:
    backbone: the frozen LM.
    prompts, traces: each rollout's token ids.
    events: each rollout's continuation indices of the cue tokens.
    exit_ids: the exit cue, pre-tokenised.
    answer_len: K, greedy tokens after the cue.
    decode: ids -> text.
    golds, graders: each rollout's reference answer and how to grade it
      (`jaxexit.answers.is_correct`).
    exit_text: the exit cue's text, prepended to each completion before
      grading (so `\\boxed{` opened by the cue counts).
    batch: rows per generation call; width: their padded length (default
      the longest).
  """
  owner = [r for r, ev in enumerate(events) for _ in ev]
  rows = [
    [*prompts[r], *traces[r][:e], *exit_ids]
    for r, ev in enumerate(events)
    for e in ev
  ]
  texts: list[str] = []
  if rows:
    ids, lengths = padded_rows(rows, width)
    for idx, real in padded_chunks(len(rows), batch):
      completions = np.asarray(
        generate_full(
          backbone, ids[idx], lengths[idx], max_new_tokens=answer_len
        )
      )[:real]
      texts += [exit_text + decode(c.tolist()) for c in completions]
  ok = [
    answers.is_correct(t, golds[r], graders[r]) for t, r in zip(texts, owner)
  ]
  labels, completions, i = [], [], 0
  for ev in events:
    labels.append(np.array(ok[i : i + len(ev)], np.int32))
    completions.append(texts[i : i + len(ev)])
    i += len(ev)
  return labels, completions


def exit_cue_boundary(
  encode: Callable[[str], list[int]], prefixes: Sequence[str], cue: str
) -> list[str]:
  """The prefixes whose tokenisation with the cue appended differs from
  tokenising the two apart (the pre-tokenised cue's boundary effect)."""
  return [p for p in prefixes if encode(p + cue) != encode(p) + encode(cue)]
