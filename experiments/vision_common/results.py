"""results.json, results.md and curve.png for a vision exit experiment."""

import math
import pathlib

from experiments.vision_common import plots
from jaxexit import report, results_store
from jaxexit.calibration import ReliabilityBins

RESULT_FIELDS = (
  "method",
  "budget_or_threshold",
  "accuracy",
  "avg_flops",
  "flops_fraction",
  "ece",
  "realised_speedup",
)
# What identifies a record in results.json across invocations into one --out.
RESULT_KEY = ("method", "budget_or_threshold")


def _check_records(records: list[dict]) -> None:
  if not records:
    raise ValueError("records is empty; nothing to write")
  for i, rec in enumerate(records):
    if not isinstance(rec, dict):
      raise ValueError(f"records[{i}] must be a dict; got {rec!r}")
    missing = [f for f in RESULT_FIELDS if f not in rec]
    if missing:
      raise ValueError(f"records[{i}] lacks fields {missing}: {rec!r}")


def _cell(field: str, value, ci=None) -> str:
  """Rounds for reading: FLOPs in M, ratios to 4 digits; a 95 % interval
  over seeds (`ci` = [lo, hi]) in brackets after the mean."""
  if ci is not None and None not in ci and value is not None:
    return (
      f"{_cell(field, value)} [{_cell(field, ci[0])}, {_cell(field, ci[1])}]"
    )
  if value is None:
    return "–"
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return str(value)
  if math.isinf(value) or math.isnan(value):
    return str(value)
  if field == "avg_flops":
    return f"{value / 1e6:.2f}M"
  if field == "realised_speedup":
    return f"{value:.2f}x"
  return f"{value:.4g}"


def write_results(
  out: pathlib.Path,
  records: list[dict],
  *,
  title: str,
  reliability: dict[str, ReliabilityBins] | None = None,
  notes: str = "",
) -> None:
  """Writes `out/results.json`, `out/results.md` and `out/curve.png`.

  Args:
    out: output folder (created if needed).
    records: flat dicts, each with every field of `RESULT_FIELDS` (extra
      keys are kept in the JSON, left out of the table). They are merged
      into an existing results.json by `RESULT_KEY` (see
      `jaxexit.results_store.merge_records`); the table and the figure show
      the merged records.
    title: heading of the Markdown file and the figure.
    reliability: method name -> reliability bins, drawn beside the curve.
    notes: Markdown appended under the table.
  """
  _check_records(records)
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  records = results_store.merge_records(
    out / "results.json", records, RESULT_KEY
  )
  rows = [
    [_cell(f, rec[f], rec.get(f"{f}_ci")) for f in RESULT_FIELDS]
    for rec in records
  ]
  body = (
    f"# {title}\n\n{report.markdown_table(RESULT_FIELDS, rows)}\n\n"
    "avg_flops: mean cumulative FLOPs of the exit taken per example; "
    "ece: 15 equal-mass bins of the gated prediction's max-probability; "
    "[lo, hi]: 95 % t interval over the record's seeds."
    "\n"
  )
  if notes:
    body += f"\n{notes.strip()}\n"
  (out / "results.md").write_text(body)
  plots.curve_figure(
    records, out / "curve.png", title=title, reliability=reliability
  )
