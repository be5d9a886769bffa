"""Early-exit decoding for decoder LMs (Llama-style and Mamba backbones).

`generate` (real skipping, every state mode), `generate_full` (the plain
reference), `simulate_exits` (teacher-forced evaluation), `decode_costs` /
`decode_flops_fraction` (XLA-counted FLOPs per token), `decode_metrics` (exit
depth, FLOPs and consistency of a run), `generate_self_speculative` (LayerSkip
draft-and-verify, lossless under greedy decoding). A backbone is anything
that follows `DecoderBackbone`; exit classifiers follow `DecoderExitHeads`;
the exit rule is a `jaxexit.exits.ExitRule` (`rules`: the named rules are
aliases of it), the same rule system as the encoders'.
"""

from jaxexit.decoding.backbone import DecoderBackbone
from jaxexit.decoding.config import STATE_MODES, DecodeConfig
from jaxexit.decoding.cost import (
  DecodeCosts,
  decode_costs,
  decode_flops_fraction,
  token_flops,
)
from jaxexit.decoding.engine import (
  DecodeOutput,
  cache_length,
  generate,
  prefill,
  sample,
)
from jaxexit.decoding.exit_heads import DecoderExitHeads, LMHeadExits
from jaxexit.decoding.full import generate_full
from jaxexit.decoding.self_speculative import (
  SelfSpeculativeOutput,
  generate_self_speculative,
)
from jaxexit.decoding.speculative import SelfSpeculativeCost
from jaxexit.decoding.simulate import SimulatedExits, simulate_exits
from jaxexit.decoding.metrics import decode_metrics
from jaxexit.decoding.rules import RULES, resolve_rule

__all__ = [
  "RULES",
  "STATE_MODES",
  "DecodeConfig",
  "DecodeCosts",
  "DecodeOutput",
  "DecoderBackbone",
  "DecoderExitHeads",
  "LMHeadExits",
  "SelfSpeculativeCost",
  "SelfSpeculativeOutput",
  "SimulatedExits",
  "cache_length",
  "decode_costs",
  "decode_flops_fraction",
  "decode_metrics",
  "generate",
  "generate_full",
  "generate_self_speculative",
  "prefill",
  "resolve_rule",
  "sample",
  "simulate_exits",
  "token_flops",
]
