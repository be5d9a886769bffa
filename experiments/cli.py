"""Command-line pieces every experiment shares."""

import argparse
from collections.abc import Callable, Sequence


def comma_choices(
  flag: str, allowed: Sequence[str]
) -> Callable[[str], tuple[str, ...]]:
  """An argparse `type` for `all` or a comma list of `allowed` values.

  Args:
    flag: the flag's name, for the error message.
    allowed: the valid values (`all` means every one, in this order).
  """

  def parse(value: str) -> tuple[str, ...]:
    if value == "all":
      return tuple(allowed)
    items = tuple(v.strip() for v in value.split(","))
    bad = [v for v in items if v not in allowed]
    if bad or not items:
      raise argparse.ArgumentTypeError(
        f"{flag} got {bad}; expected 'all' or a comma list of {list(allowed)}"
      )
    return items

  return parse
