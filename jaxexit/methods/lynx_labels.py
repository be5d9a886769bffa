"""LYNX training data: events, features and forced-exit labels of rollouts.

Paper: LYNX (Akgül et al., arXiv 2512.05325; spec `llm_exits.md` §2.2–2.4).
For each finished rollout (prompt + reasoning trace):

* `rollout_events`: the cue events (`reference_events`), or, for a trace
  without any cue, one synthetic event at 70 % of its length (training
  and calibration data only);
* `event_features`: the hidden states of the chosen layers at each event's
  cue token, from one teacher-forced pass (`lynx_decode` numbering:
  0 = embeddings, L = after the final norm);
* `forced_exit_labels`: truncate the trace before the cue token (the cue
  is dropped), append the pre-tokenised exit cue, greedy-complete up to K
  tokens (all events of a rollout in one batch), grade the completion
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


def event_features(
  backbone,
  prompt: Sequence[int],
  trace: Sequence[int],
  events: Sequence[int],
  layers: tuple[int, ...],
) -> np.ndarray:
  """[n, F] features at each event's cue token (one teacher-forced pass)."""
  seq = np.asarray([*prompt, *trace], np.int32)[None]
  feats = forward_features(backbone, seq, layers)[0]  # [T, F]
  return np.asarray(feats)[[len(prompt) + e for e in events]]


def forced_exit_labels(
  backbone,
  prompt: Sequence[int],
  trace: Sequence[int],
  events: Sequence[int],
  *,
  exit_ids: Sequence[int],
  answer_len: int,
  decode: Callable[[Sequence[int]], str],
  gold: str,
  grader: str,
  exit_text: str = "",
) -> tuple[np.ndarray, list[str]]:
  """([n] int labels, [n] completions) of forcing an exit at each event.

  Args:
    backbone: the frozen LM.
    prompt, trace: the rollout's token ids.
    events: continuation indices of the cue tokens.
    exit_ids: the exit cue, pre-tokenised.
    answer_len: K, greedy tokens after the cue.
    decode: ids -> text.
    gold, grader: the reference answer and how to grade
      (`jaxexit.answers.is_correct`).
    exit_text: the exit cue's text, prepended to each completion before
      grading (so `\\boxed{` opened by the cue counts).
  """
  if not events:
    return np.zeros((0,), np.int32), []
  rows = [[*prompt, *trace[:e], *exit_ids] for e in events]
  width = max(len(r) for r in rows)
  ids = np.zeros((len(rows), width), np.int32)
  for i, r in enumerate(rows):
    ids[i, : len(r)] = r
  lengths = np.array([len(r) for r in rows], np.int32)
  completions = np.asarray(
    generate_full(backbone, ids, lengths, max_new_tokens=answer_len)
  )
  texts = [exit_text + decode(c.tolist()) for c in completions]
  labels = np.array(
    [answers.is_correct(t, gold, grader) for t in texts], np.int32
  )
  return labels, texts


def exit_cue_boundary(
  encode: Callable[[str], list[int]], prefixes: Sequence[str], cue: str
) -> list[str]:
  """The prefixes whose tokenisation with the cue appended differs from
  tokenising the two apart (the pre-tokenised cue's boundary effect)."""
  return [p for p in prefixes if encode(p + cue) != encode(p) + encode(cue)]
