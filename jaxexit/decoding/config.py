"""The static settings of early-exit decoding, checked once.

Spec: `llm_exits.md` §1.1–1.2 (state modes, segments), §5.1 (confidences).
The threshold λ is *not* here: it is a traced argument of `generate`, so a λ
sweep reuses one compiled program.
"""

import dataclasses

from jaxexit import checks
from jaxexit.decoding.rules import RuleSpec, check_rule_spec

STATE_MODES = ("oracle", "propagate", "recompute", "freeze")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecodeConfig:
  """How a decoder LM exits early while generating.

  Attributes:
    exit_layers: block counts after which an exit head sits, increasing, each
      in [1, L-1] (e.g. (8, 16, 24) for L = 32). The final layer is always the
      last "exit".
    rule: the exit rule (`jaxexit.decoding.rules`): a name, `max_softmax`
      (top-1 probability ≥ λ), `margin` (top-1 − top-2 probability),
      `cosine` (cosine similarity of the hidden state entering and leaving
      the segment before the exit; CALM's "state"), `learned` (the exit
      heads' `score` method, in [0, 1]); or any `jaxexit.exits.ExitRule`,
      or a factory `λ -> ExitRule` (patience, entropy, your own).
    state_mode: what the blocks skipped by an early token keep for later
      tokens: `oracle` (compute every block anyway, emit the early token:
      exact states, no saving), `propagate` (CALM: the exit hidden state fills
      the skipped blocks' KV / Mamba state), `recompute` (EE-LLM: skipped
      positions wait in a buffer of `pending` tokens and are caught up, exactly,
      by the next token that goes deeper; a full pass is forced before the
      buffer overflows), `freeze` (masked KV / Mamba Δ = 0).
    exits_enabled: False runs every token through all blocks whatever the
      threshold (the "exits disabled" setting; every state mode then equals
      the full model).
    pending: capacity of the `recompute` buffer (tokens).
    max_new_tokens: N, tokens generated per sequence (the first comes from
      the prefill, at full depth).
    temperature: 0 for greedy decoding, > 0 to sample from softmax(z / T).
    eos_id: generation of a row stops after it emits this id (None: never).
  """

  exit_layers: tuple[int, ...]
  rule: RuleSpec = "max_softmax"
  state_mode: str = "propagate"
  exits_enabled: bool = True
  pending: int = 8
  max_new_tokens: int = 32
  temperature: float = 0.0
  eos_id: int | None = None

  def __post_init__(self):
    object.__setattr__(self, "exit_layers", tuple(self.exit_layers))
    layers = self.exit_layers
    if any(
      isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in layers
    ) or list(layers) != sorted(set(layers)):
      raise ValueError(
        "exit_layers must be strictly increasing ints >= 1; "
        f"got exit_layers={layers!r}"
      )
    check_rule_spec(self.rule)
    checks.one_of("state_mode", self.state_mode, STATE_MODES)
    checks.positive_int("pending", self.pending)
    checks.positive_int("max_new_tokens", self.max_new_tokens)
    checks.in_range(
      "temperature", self.temperature, 0.0, float("inf"), high_open=True
    )
    if self.eos_id is not None:
      checks.positive_int("eos_id", self.eos_id, minimum=0)

  def boundaries(self, num_layers: int) -> tuple[int, ...]:
    """Segment edges (0, e_1, …, e_k, L) for a backbone of `num_layers`."""
    if self.exit_layers and self.exit_layers[-1] >= num_layers:
      raise ValueError(
        f"exit_layers={self.exit_layers} must all be < num_layers="
        f"{num_layers} (the final layer is always the last exit)"
      )
    return (0, *self.exit_layers, num_layers)

  def check_backbone(self, backbone) -> None:
    """Raises if `backbone` cannot run this config's state mode."""
    supported = getattr(backbone, "state_modes", STATE_MODES)
    if self.state_mode not in supported:
      raise ValueError(
        f"state_mode={self.state_mode!r} is not supported by "
        f"{type(backbone).__name__}; it supports {list(supported)}"
      )
    self.boundaries(backbone.num_layers)
