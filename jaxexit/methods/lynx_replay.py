"""LYNX offline: the official procedure, replayed over a finished rollout.

Paper: LYNX (Akgül et al., arXiv 2512.05325; spec `llm_exits.md` §2.7). The
reference `generate_lynx` is tested against: the full greedy trace, events
by `reference_events`, features from one teacher-forced pass, the first
event the rule exits at, and a greedy completion of the truncated prompt
(the cue token dropped, the exit cue appended) up to a stop id.
"""

import jax.numpy as jnp
import numpy as np

from jaxexit.decoding.full import generate_full
from jaxexit.methods import lynx_conformal
from jaxexit.methods.lynx_cues import DEFAULT_CUES
from jaxexit.methods.lynx_decode import LynxConfig
from jaxexit.methods.lynx_labels import event_features, rollout_events
from jaxexit.methods.lynx_probe import LynxProbe


def replay_lynx(
  backbone,
  probe: LynxProbe,
  rule: lynx_conformal.ConformalExit,
  decode_token,
  prompt: np.ndarray,
  cfg: LynxConfig,
  cues=None,
) -> dict:
  """The offline reference for one prompt (the official procedure).

  Returns:
    {"tokens": continuation list, "events": continuation indices of the
    events, "p_hat": probe outputs there, "exit_event": the index that
    exited or -1}.
  """
  prompt = np.asarray(prompt, np.int32)[None]
  t = prompt.shape[1]
  trace = np.asarray(
    generate_full(
      backbone,
      prompt,
      np.array([t]),
      max_new_tokens=cfg.max_reason,
      eos_id=cfg.eos_id,
    )
  )[0].tolist()
  if cfg.eos_id is not None and cfg.eos_id in trace:
    trace = trace[: trace.index(cfg.eos_id) + 1]
  # The cue events, none at the trace's last token (EOS, or the
  # max_reason-th), which is never fed; p̂ at each cue token.
  evaluable, _ = rollout_events(
    [decode_token(i) for i in trace], cues or DEFAULT_CUES, synthetic=False
  )
  (feats,) = event_features(
    backbone, [prompt[0].tolist()], [trace], [evaluable], cfg.feature_layers
  )
  p_hat = [float(p) for p in np.asarray(probe(jnp.asarray(feats)))]
  go = [bool(lynx_conformal.exits(rule, jnp.float32(p))) for p in p_hat]
  if not any(go):
    return {
      "tokens": trace,
      "events": evaluable,
      "p_hat": p_hat,
      "exit_event": -1,
    }
  k = go.index(True)
  e = evaluable[k]
  head = trace[:e] + list(cfg.exit_ids)
  ctx = np.concatenate([prompt[0], head])[None]
  answer = np.asarray(
    generate_full(
      backbone, ctx, np.array([ctx.shape[1]]), max_new_tokens=cfg.answer_len
    )
  )[0].tolist()
  for i, tok in enumerate(answer):
    if tok in cfg.stop_ids:
      answer = answer[: i + 1]
      break
  return {
    "tokens": head + answer,
    "events": evaluable[: k + 1],
    "p_hat": p_hat[: k + 1],
    "exit_event": e,
  }
