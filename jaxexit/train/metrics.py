"""JSONL metrics log: one JSON object per line, each with its `step`.

A run resumed from the checkpoint of step `s` first drops every record with
`step > s` (written after that checkpoint by the interrupted run) and any torn
last line, then appends. The finished file is byte-identical to the log of an
uninterrupted run, because the resumed run recomputes the dropped steps
exactly (see `jaxexit.train.seed`).
"""

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxexit import checks


def _scalar(name: str, value) -> float | int:
  """Converts a scalar metric (Python, numpy or jax) to a JSON number."""
  arr = np.asarray(jax.device_get(value))
  if arr.ndim != 0:
    raise ValueError(f"metric {name!r} must be a scalar; got shape {arr.shape}")
  if np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
    return int(arr)
  return float(arr)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
  """Returns the records of a JSONL log, skipping lines that do not parse.

  A line that does not parse can only be the torn tail of a killed write.

  Args:
    path: the log file; a missing file reads as no records.

  Returns:
    The records in file order.
  """
  if not os.path.exists(path):
    return []
  records = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      if isinstance(record, dict) and "step" in record:
        records.append(record)
  return records


class MetricsWriter:
  """Appends metric records to a JSONL file, truncated to a resume point.

  Example::

    with MetricsWriter(workdir / "metrics.jsonl", resume_step=restored) as w:
      w.write(step, {"loss": loss})
  """

  def __init__(
    self,
    path: str | os.PathLike,
    *,
    resume_step: int = 0,
    enabled: bool = True,
  ):
    """Opens the log, keeping only records with `step <= resume_step`.

    Args:
      path: the JSONL file (created if missing).
      resume_step: the step the run restarts from; 0 for a fresh run, which
        discards any previous log.
      enabled: False leaves the file alone (processes other than 0 of a
        multi-host run); `write` still returns the record.
    """
    checks.positive_int("resume_step", resume_step, minimum=0)
    self.path = os.fspath(path)
    self._file = None
    if not enabled:
      return
    kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
    tmp = self.path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      for record in kept:
        f.write(json.dumps(record) + "\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, self.path)  # Atomic: a kill here leaves old or new log.
    self._file = open(self.path, "a", encoding="utf-8")

  def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Appends one record `{"step": step, **metrics}` and flushes it.

    Args:
      step: the number of optimizer updates done when the metrics were taken.
      metrics: scalar metrics (Python, numpy or jax scalars); fetching jax
        values blocks until they are computed.

    Returns:
      The record as written (metrics as Python numbers).
    """
    checks.positive_int("step", step, minimum=0)
    record = {"step": int(step)}
    record.update({k: _scalar(k, v) for k, v in metrics.items()})
    if self._file is not None:
      self._file.write(json.dumps(record) + "\n")
      self._file.flush()
    return record

  def close(self) -> None:
    """Closes the file."""
    if self._file is not None:
      self._file.close()

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def format_metrics(
  metrics: Mapping[str, Any], digits: int = 4
) -> dict[str, str]:
  """Formats scalar metrics compactly for a progress bar postfix."""
  out = {}
  for k, v in metrics.items():
    x = _scalar(k, v)
    exact = isinstance(x, int) or not math.isfinite(x)
    out[k] = str(x) if exact else f"{x:.{digits}g}"
  return out
