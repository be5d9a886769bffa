"""A tqdm progress bar over training steps, with metrics as its postfix.

The bar is off when stderr is not a terminal (CI logs, subprocesses) unless
asked for, and can always be turned off; when off, every method is a no-op.
"""

import sys
from collections.abc import Mapping
from typing import Any

import tqdm

from jaxexit.train.metrics import format_metrics


class ProgressBar:
  """Steps `initial..total` with an optional metrics postfix."""

  def __init__(self, total: int, *, initial: int = 0,
               enabled: bool | None = None, desc: str = "train"):
    """Creates the bar.

    Args:
      total: the last step.
      initial: the step the run starts from (non-zero when resuming).
      enabled: `True`/`False` forces the bar on/off; `None` shows it only
        when stderr is a terminal.
      desc: the label in front of the bar.
    """
    if enabled is None:
      enabled = sys.stderr.isatty()
    self.enabled = enabled
    self._bar = tqdm.tqdm(total=total, initial=initial, desc=desc,
                          dynamic_ncols=True) if enabled else None

  def update(self, n: int = 1, metrics: Mapping[str, Any] | None = None
             ) -> None:
    """Advances by `n` steps and, if given, shows `metrics` (fetches them)."""
    if self._bar is None:
      return
    if metrics:
      self._bar.set_postfix(format_metrics(metrics), refresh=False)
    self._bar.update(n)

  def close(self) -> None:
    """Closes the bar (no-op when disabled)."""
    if self._bar is not None:
      self._bar.close()

  def __enter__(self) -> "ProgressBar":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
