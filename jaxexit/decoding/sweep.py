"""λ sweeps of early-exit decoding against the full model, timed side by side.

For each threshold one `generate` run gives the exit pattern; its wall-clock
time and the full model's (`generate_full`, same prompts and length) are
measured interleaved in the same process (`time_side_by_side`), so the two
token rates share the machine's noise. Quality is *consistency*: the share
of generated positions whose token equals the full model's greedy token
(CALM's token consistency; DYNAMAX's consistency metric, §3.2).
"""

import functools

import numpy as np

from jaxexit.decoding.config import DecodeConfig
from jaxexit.decoding.cost import DecodeCosts, flops_fraction
from jaxexit.decoding.engine import DecodeOutput, generate
from jaxexit.decoding.full import generate_full
from jaxexit.timing import time_side_by_side


def decode_metrics(out: DecodeOutput, full_tokens, costs: DecodeCosts
                   ) -> dict[str, float]:
  """avg_layers, flops_fraction and consistency of one run.

  Decode steps only: the first token comes from the prefill at full depth
  in every method, so it is left out of all three.
  """
  valid = np.asarray(out.valid)[:, 1:]
  layers = np.asarray(out.exit_layer)[:, 1:][valid]
  same = np.asarray(out.tokens)[:, 1:] == np.asarray(full_tokens)[:, 1:]
  return {"avg_layers": float(layers.mean()),
          "flops_fraction": flops_fraction(out, costs),
          "consistency": float(same[valid].mean())}


def sweep_thresholds(backbone, heads, prompts, lengths, thresholds,
                     config: DecodeConfig, costs: DecodeCosts, *,
                     warmup: int = 1, repeats: int = 3) -> list[dict]:
  """One record per threshold with exit, cost, consistency and token rates.

  Args:
    backbone, heads: as in `generate`.
    prompts, lengths: [B, T] right-padded prompts and their lengths.
    thresholds: λ values in [0, 1].
    config: the decode config (its threshold-free settings).
    costs: `decode_costs` for this backbone, heads and cache length.
    warmup, repeats: untimed / timed interleaved rounds per threshold.

  Returns:
    Records `{"threshold", "avg_layers", "flops_fraction", "consistency",
    "tokens_per_s", "full_tokens_per_s", "output"}` (`output`: the
    `DecodeOutput`, for callers that score the text).
  """
  full_fn = functools.partial(
      generate_full, backbone, prompts, lengths,
      max_new_tokens=config.max_new_tokens, eos_id=config.eos_id)
  full = full_fn()
  records = []
  for threshold in thresholds:
    exit_fn = functools.partial(generate, backbone, heads, prompts, lengths,
                                float(threshold), config)
    out = exit_fn()
    times = time_side_by_side({"exit": (exit_fn, ()), "full": (full_fn, ())},
                              warmup=warmup, repeats=repeats)
    tokens = float(np.asarray(out.valid).sum())
    full_tokens = float(np.asarray(full).size)  # it never stops early
    records.append({
        "threshold": float(threshold),
        **decode_metrics(out, full, costs),
        "tokens_per_s": tokens / times["exit"].median,
        "full_tokens_per_s": full_tokens / times["full"].median,
        "output": out})
  return records
