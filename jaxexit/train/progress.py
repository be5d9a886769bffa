"""Progress over training steps: a tqdm bar, or lines in a log.

On a terminal (stderr is a tty) it is a tqdm bar with the metrics as its
postfix. Elsewhere (output sent to a file, CI) it prints one line to stdout
every `line_every_s` seconds (and at the end) with the step, percentage,
elapsed time, ETA and metrics, so a log shows the run moving. Both can be
turned off; when off, every method is a no-op.
"""

import sys
import time
from collections.abc import Mapping
from typing import Any

import tqdm

from jaxexit.train.metrics import format_metrics


class ProgressBar:
  """Steps `initial..total` with an optional metrics postfix."""

  def __init__(
    self,
    total: int,
    *,
    initial: int = 0,
    enabled: bool | None = None,
    desc: str = "train",
    line_every_s: float = 30.0,
  ):
    """Creates the bar.

    Args:
      total: the last step.
      initial: the step the run starts from (non-zero when resuming).
      enabled: `True` forces the bar, `False` turns all progress off, `None`
        shows the bar on a terminal and progress lines elsewhere.
      desc: the label in front of the bar or line.
      line_every_s: seconds between progress lines (not on a terminal).
    """
    tty = sys.stderr.isatty()
    self.enabled = enabled is not False
    use_bar = enabled is True or (enabled is None and tty)
    self._bar = (
      tqdm.tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)
      if use_bar
      else None
    )
    self._lines = self.enabled and not use_bar
    self._desc, self._total, self._initial = desc, total, initial
    self._done = initial
    self._every = line_every_s
    self._start = self._last = time.monotonic()
    self._metrics: Mapping[str, Any] | None = None

  def _line(self) -> None:
    now = time.monotonic()
    self._last = now
    elapsed = now - self._start
    ran = self._done - self._initial
    left = self._total - self._done
    eta = elapsed / ran * left if ran else float("nan")
    pct = 100.0 * self._done / max(self._total, 1)
    metrics = (
      (
        " "
        + ", ".join(
          f"{k}={v}" for k, v in format_metrics(self._metrics).items()
        )
      )
      if self._metrics
      else ""
    )
    print(
      f"{self._desc}: step {self._done}/{self._total} ({pct:.0f}%), "
      f"{format_duration(elapsed)} elapsed, "
      f"ETA {format_duration(eta)}{metrics}",
      flush=True,
    )

  def update(
    self, n: int = 1, metrics: Mapping[str, Any] | None = None
  ) -> None:
    """Advances by `n` steps and, if given, shows `metrics` (fetches them)."""
    if self._lines:
      self._done += n
      if metrics:
        self._metrics = metrics
      if time.monotonic() - self._last >= self._every:
        self._line()
      return
    if self._bar is None:
      return
    if metrics:
      self._bar.set_postfix(format_metrics(metrics), refresh=False)
    self._bar.update(n)

  def close(self) -> None:
    """Closes the bar, or prints the last line (no-op when disabled)."""
    if self._lines and self._done > self._initial:
      self._line()
    if self._bar is not None:
      self._bar.close()

  def __enter__(self) -> "ProgressBar":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def format_duration(seconds: float) -> str:
  """`1h02m03s` / `4m05s` / `7s`; `?` when unknown."""
  if seconds != seconds:  # NaN
    return "?"
  s = int(round(seconds))
  h, rest = divmod(s, 3600)
  m, s = divmod(rest, 60)
  if h:
    return f"{h}h{m:02d}m{s:02d}s"
  return f"{m}m{s:02d}s" if m else f"{s}s"
