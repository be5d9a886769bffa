"""Host-side checks of what the decoding entry points are given.

`generate` and `generate_full` run the same checks before anything is
traced, so both refuse the same inputs with the same ValueError (the policy
is in the `jaxexit.checks` module docstring):

* prompts [B, T] and lengths [B] with B ≥ 1: an empty batch (B = 0) is
  refused, as by the execution modes (`jaxexit.execution.modes`);
* lengths in [1, T];
* every prompt id in [0, V), padding included (an id ≥ V would embed as
  zeros or NaN and a negative one would wrap around, silently);
* the longest prompt + max_new_tokens ≤ the backbone's `max_position`, when
  it has one (a Transformer's `__call__` refuses longer inputs; an SSM has
  no limit);
* eos_id, when given, in [0, V).

Prompts and lengths that are global arrays over several processes are
gathered first (`jaxexit.decoding.sharded.host_values`), so every process
checks the whole batch.

Axes: B batch, T prompt tokens, V vocabulary.
"""

import numpy as np

from jaxexit import checks
from jaxexit.decoding.sharded import host_values


def cache_length(prompt_len: int, max_new_tokens: int) -> int:
  """Cache positions needed: the prompt and every generated token but the
  last (which is emitted, never fed back)."""
  return prompt_len + max_new_tokens - 1


def _check_batch(prompts, lengths) -> None:
  """Raises unless prompts is [B, T] and lengths [B] with B ≥ 1."""
  checks.rank_at_least("prompts", prompts, 2, "B, T")
  if np.ndim(prompts) != 2 or np.shape(lengths) != np.shape(prompts)[:1]:
    raise ValueError(
      f"prompts must be [B, T] and lengths [B]; got "
      f"prompts.shape={np.shape(prompts)}, "
      f"lengths.shape={np.shape(lengths)}"
    )
  if np.shape(prompts)[0] == 0:
    raise ValueError(
      f"batch is empty (B = 0): prompts.shape="
      f"{np.shape(prompts)}; decoding needs at least one "
      "prompt"
    )


def check_prompts(prompts, lengths, max_new_tokens: int, max_len: int) -> None:
  """Raises if the prompts are malformed or do not fit a `max_len` cache."""
  _check_batch(prompts, lengths)
  lengths = np.asarray(lengths)
  if lengths.min() < 1 or lengths.max() > np.shape(prompts)[1]:
    raise ValueError(
      f"lengths must lie in [1, T={np.shape(prompts)[1]}]; "
      f"got lengths={lengths.tolist()}"
    )
  needed = cache_length(int(np.shape(prompts)[1]), max_new_tokens)
  if needed > max_len:
    raise ValueError(
      f"prompt of {np.shape(prompts)[1]} tokens + max_new_tokens="
      f"{max_new_tokens} needs a cache of {needed} positions; "
      f"got max_len={max_len}"
    )


def _check_max_position(backbone, lengths, max_new_tokens: int) -> None:
  """Raises if the longest sequence would pass `backbone.max_position`."""
  limit = getattr(backbone, "max_position", None)
  if limit is None:
    return
  longest = int(np.max(lengths))
  if longest + max_new_tokens > limit:
    raise ValueError(
      f"prompt length {longest} (the longest row) + max_new_tokens="
      f"{max_new_tokens} = {longest + max_new_tokens} positions exceeds "
      f"the model's max_position={limit}"
    )


def check_eos_id(eos_id: int | None, vocab_size: int) -> None:
  """Raises unless `eos_id` is None or an int in [0, vocab_size)."""
  if eos_id is None:
    return
  checks.positive_int("eos_id", eos_id, minimum=0)
  if eos_id >= vocab_size:
    raise ValueError(
      f"eos_id={eos_id} is outside the vocabulary [0, vocab_size={vocab_size})"
    )


def check_inputs(
  backbone,
  prompts,
  lengths,
  *,
  max_new_tokens: int,
  eos_id: int | None,
  max_len: int | None = None,
) -> int:
  """Every check of the module docstring, on the host.

  Args:
    backbone: a `DecoderBackbone` (`vocab_size`, optional `max_position`).
    prompts: [B, T] right-padded prompt ids.
    lengths: [B] prompt lengths.
    max_new_tokens: N, tokens to generate.
    eos_id: the end-of-sequence id, or None.
    max_len: cache positions (None: exactly what the prompts need).

  Returns:
    The cache length: `max_len`, or `cache_length(T, N)` when it is None.
  """
  checks.positive_int("max_new_tokens", max_new_tokens)
  prompts, lengths = host_values(prompts), host_values(lengths)
  _check_batch(prompts, lengths)
  needed = cache_length(int(np.shape(prompts)[1]), max_new_tokens)
  max_len = needed if max_len is None else max_len
  check_prompts(prompts, lengths, max_new_tokens, max_len)
  checks.token_ids("prompts", prompts, backbone.vocab_size)
  _check_max_position(backbone, lengths, max_new_tokens)
  check_eos_id(eos_id, backbone.vocab_size)
  return max_len
