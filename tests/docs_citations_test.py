"""Docstring citations of Markdown files point at files and sections that exist.

Every `.py` file under jaxexit/, kernels_pallas/, experiments/ and
benchmarks/ is scanned as text (docstrings, comments and strings alike).

What counts as a citation:

* a file name ending in `.md` (`encoder_exits.md`, `docs/papers/x.md`,
  `BENCHMARKS.md`, `bundled/SOURCES.md`, ...), and
* the sections that follow it: a run of `§<n>[.<n>...]` tokens that starts
  right after the name (closing backticks, quotes or parentheses and
  whitespace, including one line break, may come between) and continues
  while consecutive `§` tokens are at most `MAX_GAP` characters apart with
  no sentence end (". "), colon, semicolon or other `.md` name between them.
  So "spec `exploratory_iteration.md` §3.2–3.5, §4 and §8" cites 3.2, 3.3, 3.4,
  3.5, 4
  and 8, and `§2.2 step 3, §2.5` cites 2.2 and 2.5. A range `a–b` (en dash
  or hyphen) cites every section from a to b; a shorter end replaces the
  last components of the start (`§12.8–9` is 12.8 and 12.9). A bare `§n`
  that follows no file name (`PALBERT §3.5`) is not a citation here.

How a cited name resolves (first rule that applies):

1. a bare spec name (no "/") that exists in docs/papers/ is that spec;
2. a name whose file part is in `GENERATED_OUTPUTS` (`results.md`) names a
   file the experiments write into their --out directory, not a document
   of the repository: it is skipped;
3. a relative path or bare name is looked up relative to the repository
   root, then relative to the citing file's directory, then (bare names
   only) as the unique file of that name below the citing file's
   directory;
4. anything else (an absolute path, a file nowhere in the repository) is
   unresolved, and the test fails naming file:line.

A cited section `n` exists in a Markdown file when the file has a heading
whose title starts with it (`## 3. PALBERT`, `### 3.4 Hyper-parameters`,
`#### 8.4.1 IM warm-up`) or a line that labels it explicitly, starting,
after an optional list marker, with `**§n**` (`- **§12.8** JEI-DNN: ...`).
"""

import dataclasses
import functools
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SPECS = ROOT / "docs" / "papers"
SCANNED = ("jaxexit", "kernels_pallas", "experiments", "benchmarks")
GENERATED_OUTPUTS = frozenset({"results.md"})
MAX_GAP = 24

_NAME = re.compile(r"(?<![\w./~-])([\w.~/-]*\w\.md)(?!\w)")
_SECTION = re.compile(r"§\s?(\d+(?:\.\d+)*)(?:\s?[–-]\s?§?(\d+(?:\.\d+)*))?")
_LEAD = re.compile(r"[`'\")\]]*[ \t]*(?:\n[ \t]*(?:#[ \t]*)?)?")
_GAP_STOP = re.compile(r"\.md|\.\s|[:;]")
_HEADING = re.compile(r"^#{1,6}[ \t]+§?(\d+(?:\.\d+)*)\.?(?:[ \t]|$)")
_LABEL = re.compile(r"^[ \t]*(?:[-*+][ \t]+)?\*\*§(\d+(?:\.\d+)*)\*\*")


@dataclasses.dataclass(frozen=True)
class Citation:
  path: str  # citing file, relative to ROOT
  line: int
  name: str  # the cited name as written
  sections: tuple[str, ...]

  @property
  def where(self) -> str:
    return f"{self.path}:{self.line}"


def _expand(start: str, end: str | None) -> list[str]:
  """`3.2`–`3.5` -> 3.2, 3.3, 3.4, 3.5; `12.8`–`9` -> 12.8, 12.9."""
  if end is None:
    return [start]
  first = start.split(".")
  last = end.split(".")
  if len(last) < len(first):
    last = first[: len(first) - len(last)] + last
  if first[:-1] != last[:-1] or int(last[-1]) < int(first[-1]):
    return [start, ".".join(last)]  # not a simple run: check both ends
  return [
    ".".join(first[:-1] + [str(i)])
    for i in range(int(first[-1]), int(last[-1]) + 1)
  ]


def _sections_after(text: str, pos: int) -> tuple[str, ...]:
  pos = _LEAD.match(text, pos).end()
  found = []
  while match := _SECTION.match(text, pos):
    found += _expand(match.group(1), match.group(2))
    nxt = text.find("§", match.end())
    if nxt < 0:
      break
    gap = text[match.end() : nxt]
    if len(gap) > MAX_GAP or gap.count("\n") > 1 or _GAP_STOP.search(gap):
      break
    pos = nxt
  return tuple(found)


@functools.cache
def citations() -> tuple[Citation, ...]:
  found = []
  for top in SCANNED:
    for path in sorted((ROOT / top).rglob("*.py")):
      text = path.read_text(encoding="utf-8")
      if ".md" not in text:
        continue
      rel = path.relative_to(ROOT).as_posix()
      for match in _NAME.finditer(text):
        found.append(
          Citation(
            rel,
            text.count("\n", 0, match.start()) + 1,
            match.group(1),
            _sections_after(text, match.end()),
          )
        )
  return tuple(found)


def resolve(citation: Citation) -> pathlib.Path | None | str:
  """The cited file, "generated" for experiment outputs, None if missing."""
  name = citation.name
  bare = "/" not in name
  if bare and (SPECS / name).is_file():
    return SPECS / name
  if pathlib.PurePosixPath(name).name in GENERATED_OUTPUTS:
    return "generated"
  if name.startswith(("/", "~")):
    return None
  here = (ROOT / citation.path).parent
  for base in (ROOT, here):
    if (base / name).is_file():
      return base / name
  if bare:
    below = [p for p in here.rglob(name) if p.is_file()]
    if len(below) == 1:
      return below[0]
  return None


_SECTIONS_CACHE: dict[pathlib.Path, frozenset[str]] = {}


def sections_of(md: pathlib.Path) -> frozenset[str]:
  if md not in _SECTIONS_CACHE:
    found = set()
    in_code = False
    for line in md.read_text(encoding="utf-8").splitlines():
      if line.lstrip().startswith("```"):
        in_code = not in_code
        continue
      if in_code:
        continue
      match = _HEADING.match(line) or _LABEL.match(line)
      if match:
        found.add(match.group(1))
    _SECTIONS_CACHE[md] = frozenset(found)
  return _SECTIONS_CACHE[md]


def problems(found: tuple[Citation, ...]) -> list[str]:
  """Every broken citation, as "file:line: why"."""
  errors = []
  for cit in found:
    target = resolve(cit)
    if target == "generated":
      continue
    if target is None:
      errors.append(
        f"{cit.where}: `{cit.name}` does not resolve to a file "
        "in the repository"
      )
      continue
    have = sections_of(target)
    for section in cit.sections:
      if section not in have:
        errors.append(
          f"{cit.where}: `{cit.name}` §{section}: no heading or "
          f"**§{section}** label in "
          f"{target.relative_to(ROOT).as_posix()}"
        )
  return errors


# ---------------------------------------------------------------- the check


def test_cited_files_and_sections_exist():
  errors = problems(citations())
  assert not errors, "broken citations:\n" + "\n".join(errors)


def test_every_spec_is_indexed():
  readme = (SPECS / "README.md").read_text(encoding="utf-8")
  specs = sorted(p.name for p in SPECS.glob("*.md") if p.name != "README.md")
  assert specs, "no specs in docs/papers"
  for spec in specs:
    assert f"]({spec})" in readme, f"{spec} missing from docs/papers/README.md"


# ------------------------------------------------------ the parser's rules


def _cit(text: str) -> list[tuple[str, tuple[str, ...]]]:
  return [
    (m.group(1), _sections_after(text, m.end())) for m in _NAME.finditer(text)
  ]


@pytest.mark.parametrize(
  "text, expected",
  [
    (
      "spec `exploratory_iteration.md` §3.2–3.5, §4 and §8 (the jaxued",
      [("exploratory_iteration.md", ("3.2", "3.3", "3.4", "3.5", "4", "8"))],
    ),
    (
      "(spec `hidrop_pallas.md` §2.2 step 3, §2.5) rank",
      [("hidrop_pallas.md", ("2.2", "2.5"))],
    ),
    (
      "spec `encoder_exits.md` §8, pitfalls\n§12.8–9. The exit",
      [("encoder_exits.md", ("8", "12.8", "12.9"))],
    ),
    (
      "(spec `encoder_exits.md`\n§1.1): run all",
      [("encoder_exits.md", ("1.1",))],
    ),
    ("see /x/encoder_exits.md §8-9) is", [("/x/encoder_exits.md", ("8", "9"))]),
    (
      "`llm_exits.md` §3). No code\nis public (§3.2, x)",
      [("llm_exits.md", ("3",))],
    ),
    (
      "`exploratory_iteration.md` §3.4 (S = Var_G(r), population variance by "
      "default) and §7",
      [("exploratory_iteration.md", ("3.4",))],
    ),
    (
      "(PALBERT §3.5, encoder_exits.md §10.1): x",
      [("encoder_exits.md", ("10.1",))],
    ),
    ('f"{out}/results.json, results.md"', [("results.md", ())]),
    ("# comment `a.md`\n# §2 continues", [("a.md", ("2",))]),
  ],
)
def test_parser(text, expected):
  assert _cit(text) == expected


def test_sections_of_headings_and_labels(tmp_path):
  md = tmp_path / "x.md"
  md.write_text(
    "# Title 1\n## 0. Sources\n### 3.4 Hyper\n#### 8.4.1 Warm\n"
    "- **§12.2** KL\n**§7** x\n```\n## 9. in code\n```\n"
    "## 10 Tables\ntext §11\n",
    encoding="utf-8",
  )
  assert sections_of(md) == {"0", "3.4", "8.4.1", "12.2", "7", "10"}


def test_resolution_rules():
  def at(path, name):
    return resolve(Citation(path, 1, name, ()))

  assert at("jaxexit/cost.py", "encoder_exits.md") == (
    SPECS / "encoder_exits.md"
  )
  assert at("experiments/jei_dnn/notes.py", "results.md") == "generated"
  assert at("benchmarks/exit_modes.py", "BENCHMARKS.md") == (
    ROOT / "BENCHMARKS.md"
  )
  assert at("jaxexit/data/bundle_build.py", "bundled/SOURCES.md") == (
    ROOT / "jaxexit/data/bundled/SOURCES.md"
  )
  assert at("jaxexit/data/bundled.py", "bundled/SOURCES.md") == (
    ROOT / "jaxexit/data/bundled/SOURCES.md"
  )
  assert at("jaxexit/cost.py", "/work/shared/papers/encoder_exits.md") is None
  assert at("jaxexit/cost.py", "nowhere_at_all.md") is None
