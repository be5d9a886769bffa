"""The exit rule of early-exit decoding: a `jaxexit.exits.ExitRule`.

Decoding and the encoders share one rule system. `DecodeConfig.rule` is
one of:

* a name (`RULES`): a thin alias of a `jaxexit.exits` threshold rule built
  with `generate`'s λ: `max_softmax` → `max_softmax_rule(λ)`, `margin` →
  `margin_rule(λ)`, `cosine` → `cosine_rule(λ)` (CALM's hidden-state
  confidence), `learned` → `score_rule(λ)` (the exit heads' `score`);
* a rule factory `λ -> ExitRule` (e.g. `jaxexit.exits.entropy_rule` or
  `lambda lam: jaxexit.exits.patience_rule(2)`): built inside `jit` with the
  traced λ, so a λ sweep reuses one compiled program;
* an `ExitRule` (λ is then unused).

At exit e (0-based) of a decode step the rule sees an `ExitHeadOutput`
whose `extra` is always `{"h_in": [B, D], "h_out": [B, D]}` (the current
token's hidden state entering and leaving the blocks before the exit), whose
`logits` ([B, V], the exit head's next-token logits) are computed only when
the rule's `reads` names them, and whose `score` ([B], the heads' `score`
method) likewise. `update(state, head_out, e)` is called once per exit
reached, with a fresh `init(B, None)` state per token.
"""

from collections.abc import Callable

import jax.numpy as jnp

from jaxexit.exits import (
  ExitHeadOutput,
  ExitRule,
  cosine_rule,
  margin_rule,
  max_softmax_rule,
  score_rule,
)

RuleSpec = str | ExitRule | Callable[..., ExitRule]

# Names accepted by `DecodeConfig.rule` and the rule factory of each.
ALIASES: dict[str, Callable[..., ExitRule]] = {
  "max_softmax": max_softmax_rule,
  "margin": margin_rule,
  "cosine": cosine_rule,
  "learned": score_rule,
}
RULES = tuple(ALIASES)
# The `ExitHeadOutput` fields a decode step can give a rule.
DECODE_FIELDS = ("logits", "score", "extra")


def check_rule_spec(rule: RuleSpec) -> None:
  """Raises unless `rule` is a name in `RULES`, an ExitRule or a factory."""
  if isinstance(rule, str):
    if rule not in ALIASES:
      raise ValueError(f"rule must be one of {list(RULES)}; got rule={rule!r}")
    return
  if not (isinstance(rule, ExitRule) or callable(rule)):
    raise ValueError(
      "rule must be a name in "
      f"{list(RULES)}, a jaxexit.exits.ExitRule or a factory "
      f"`threshold -> ExitRule`; got rule={rule!r}"
    )


def resolve_rule(rule: RuleSpec, threshold) -> ExitRule:
  """The `ExitRule` of `rule` at threshold λ (may be traced).

  Raises:
    ValueError: if a factory does not return an ExitRule, or the rule reads
      a field a decode step does not provide (`halt`).
  """
  check_rule_spec(rule)
  if isinstance(rule, str):
    built = ALIASES[rule](threshold)
  elif isinstance(rule, ExitRule):
    built = rule
  else:
    built = rule(threshold)
    if not isinstance(built, ExitRule):
      raise ValueError(
        f"rule factory {rule!r} returned {type(built).__name__}, not an "
        "ExitRule"
      )
  missing = sorted(set(built.reads) - set(DECODE_FIELDS))
  if missing:
    raise ValueError(
      f"the rule reads ExitHeadOutput fields {missing}, which early-exit "
      f"decoding does not provide (it provides {list(DECODE_FIELDS)})"
    )
  return built


def check_heads(rule: ExitRule, heads) -> None:
  """Raises if `rule` reads `score` and `heads` has no `score` method."""
  if "score" in rule.reads and not hasattr(heads, "score"):
    raise ValueError(
      "the rule reads ExitHeadOutput.score (e.g. rule='learned'), which "
      f"needs exit heads with a `score` method; {type(heads).__name__} has "
      "none"
    )


def final_confidence(rule: ExitRule, logits, extra: dict | None = None):
  """[B] float32: `rule.measure` at the final layer, for reports.

  Args:
    rule: the resolved rule.
    logits: [B, V] the final layer's logits.
    extra: `{"h_in", "h_out"}` ([B, D]) around the last segment, or None
      (the prefill).

  Returns:
    1 for rules that read `score` (no score head at the final layer: it is
    always safe), 0 without a measure or when the measure reads `extra` and
    there is none, else the measure.
  """
  batch = logits.shape[0]
  if "score" in rule.reads:
    return jnp.ones((batch,), jnp.float32)
  if "extra" in rule.reads and extra is None:
    return jnp.zeros((batch,), jnp.float32)
  return exit_measure(rule, ExitHeadOutput(logits=logits, extra=extra), batch)


def exit_measure(rule: ExitRule, head_out: ExitHeadOutput, batch: int):
  """[B] float32 `rule.measure(head_out)`, or zeros for rules without one."""
  if rule.measure is None:
    return jnp.zeros((batch,), jnp.float32)
  return jnp.asarray(rule.measure(head_out), jnp.float32)
