"""Writing results the way users read them: JSON records and Markdown.

Experiments and benchmarks write a list of flat records as `results.json`
and the same records as a Markdown table; benchmarks also rewrite their own
marked section of BENCHMARKS.md and leave the rest of the file alone.
"""

import json
import pathlib
from collections.abc import Sequence


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
  """A GitHub Markdown table; cells are formatted with `str`."""
  lines = [
    "| " + " | ".join(header) + " |",
    "|" + "|".join("---" for _ in header) + "|",
  ]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def write_json(path: pathlib.Path, records: list[dict]) -> None:
  """Writes `records` as an indented JSON list, creating parent folders."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(records, indent=1) + "\n")


def write_section(path: pathlib.Path, name: str, body: str) -> None:
  """Replaces the text between `<!-- name:start -->` and `<!-- name:end -->`.

  Appends the section if the markers are absent.
  """
  path = pathlib.Path(path)
  start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
  text = path.read_text() if path.exists() else "# Benchmarks\n"
  block = f"{start}\n{body.strip()}\n{end}"
  if start in text and end in text:
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    text = head + block + tail
  else:
    text = text.rstrip() + "\n\n" + block + "\n"
  path.write_text(text)
