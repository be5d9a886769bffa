"""Quality and cost of one early-exit run against the full model's tokens.

Consistency is the share of generated positions whose token equals the full
model's greedy token at the same position (CALM's token consistency;
DYNAMAX's consistency metric, §3.2).
"""

import numpy as np

from jaxexit.decoding.cost import DecodeCosts, decode_flops_fraction
from jaxexit.decoding.engine import DecodeOutput


def decode_metrics(
  out: DecodeOutput, full_tokens, costs: DecodeCosts
) -> dict[str, float]:
  """avg_layers, flops_fraction and consistency of one run.

  Decode steps only: the first token comes from the prefill at full depth
  in every method, so it is left out of all three.
  """
  valid = np.asarray(out.valid)[:, 1:]
  layers = np.asarray(out.exit_layer)[:, 1:][valid]
  same = np.asarray(out.tokens)[:, 1:] == np.asarray(full_tokens)[:, 1:]
  return {
    "avg_layers": float(layers.mean()),
    "flops_fraction": decode_flops_fraction(out, costs),
    "consistency": float(same[valid].mean()),
  }
