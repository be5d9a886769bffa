"""Library files stay small: at most 400 lines, or a stated reason on line 1."""

import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
MAX_LINES = 400
REASON = "# Over 400 lines: "


def test_library_files_are_short_or_say_why():
  long = []
  for package in ("jaxexit", "kernels_pallas"):
    for path in sorted((REPO / package).rglob("*.py")):
      lines = path.read_text().splitlines()
      if len(lines) > MAX_LINES and not lines[0].startswith(REASON):
        long.append(f"{path.relative_to(REPO)} ({len(lines)} lines)")
  assert not long, (
    f"over {MAX_LINES} lines without a '{REASON}...' first line: {long}"
  )
