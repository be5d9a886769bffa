"""Rewrites one marked section of BENCHMARKS.md, leaving the rest alone."""

import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"


def table(header: list[str], rows: list[list]) -> str:
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def write_section(name: str, body: str, path: pathlib.Path = BENCHMARKS_MD):
  """Replaces the text between `<!-- name:start -->` and `<!-- name:end -->`."""
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
