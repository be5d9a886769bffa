"""Command-line pieces every experiment shares."""

import argparse
import pathlib
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


class Log:
  """Prints to stdout and appends to `<out>/log.txt`."""

  def __init__(self, path: pathlib.Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115

  def __call__(self, *parts) -> None:
    line = " ".join(str(p) for p in parts)
    print(line, flush=True)
    self._file.write(line + "\n")
    self._file.flush()
