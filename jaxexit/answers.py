"""Answer extraction and grading for reasoning traces (LYNX's graders).

Spec: `llm_exits.md` §2.4 (extract the last boxed answer, grade with a
tolerant numeric checker). Three graders, named by
`jaxexit.data.reasoning.Problem.grader`:

* "number" (GSM8K, AIME): the last `\\boxed{...}`, else a GSM8K "#### x",
  else the last number in the text; equal when both parse as numbers within
  1e-6 (relative), thousands separators and a trailing "." ignored.
* "math" (MATH-500): the last `\\boxed{...}` (braces matched), normalised
  (`normalize_math`: spaces, `$`, `\\left`/`\\right`, `\\!`, `\\dfrac`/
  `\\tfrac`, `^\\circ`, `\\%`, `\\text{..}` units, a leading "x =")
  and compared as strings, then as numbers (fractions `\\frac{a}{b}` and
  `a/b` included) when both parse.
* "letter" (CommonsenseQA): the last choice letter A–E standing alone
  ("(B)", "Answer: B", "\\boxed{B}").

Host-side Python (strings), no JAX.
"""

import re

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_LETTER = re.compile(r"(?<![A-Za-z])([A-E])(?![A-Za-z])")


def last_boxed(text: str) -> str | None:
  """The content of the last `\\boxed{...}` (nested braces matched), or
  None; an unclosed box (a cut-off completion) counts up to the end."""
  start = text.rfind("\\boxed{")
  if start < 0:
    return None
  i, depth, out = start + len("\\boxed{"), 1, []
  while i < len(text):
    ch = text[i]
    depth += (ch == "{") - (ch == "}")
    if depth == 0:
      break
    out.append(ch)
    i += 1
  return "".join(out).strip()


def _to_float(s: str) -> float | None:
  s = s.strip().rstrip(".").replace(",", "")
  frac = re.fullmatch(r"(-?)\\frac\{([^{}]+)\}\{([^{}]+)\}", s)
  if frac:
    s = f"{frac.group(1)}({frac.group(2)})/({frac.group(3)})"
  simple = re.fullmatch(r"(-?)\(?(-?[\d.]+)\)?/\(?(-?[\d.]+)\)?", s)
  try:
    if simple:
      sign = -1.0 if simple.group(1) else 1.0
      return sign * float(simple.group(2)) / float(simple.group(3))
    return float(s)
  except (ValueError, ZeroDivisionError):
    return None


def _close(a: float, b: float) -> bool:
  return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))


def extract_number(text: str) -> str | None:
  """The answer of a GSM8K-style completion (see the module docstring)."""
  boxed = last_boxed(text)
  if boxed is not None:
    found = _NUMBER.findall(boxed)
    return found[-1].replace(",", "") if found else boxed
  if "####" in text:
    text = text.split("####")[-1]
  found = _NUMBER.findall(text)
  return found[-1].replace(",", "") if found else None


def normalize_math(s: str) -> str:
  """A MATH answer in a canonical string form (see the module docstring)."""
  s = s.strip().strip("$").strip()
  s = re.sub(r"\\text\{\s*[a-zA-Z ]*\}$", "", s)  # trailing units
  s = re.sub(r"\\(?:text|mathrm|textbf)\{([^{}]*)\}", r"\1", s)
  for old, new in (
    ("\\left", ""),
    ("\\right", ""),
    ("\\!", ""),
    ("\\,", ""),
    ("\\dfrac", "\\frac"),
    ("\\tfrac", "\\frac"),
    ("^\\circ", ""),
    ("^{\\circ}", ""),
    ("\\%", ""),
    ("%", ""),
    ("\\$", ""),
  ):
    s = s.replace(old, new)
  s = re.sub(r"^[a-z]\s*=\s*", "", s)  # "x = 5"
  s = re.sub(r"\s+", "", s).rstrip(".")
  s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)  # \frac12
  return s


def extract_letter(text: str) -> str | None:
  """The last standalone choice letter A–E (boxed first), or None."""
  boxed = last_boxed(text)
  found = _LETTER.findall(boxed if boxed else text)
  return found[-1] if found else None


def is_correct(completion: str, gold: str, grader: str) -> bool:
  """Whether `completion`'s extracted answer matches `gold`.

  Args:
    completion: the model's text (e.g. the forced-exit completion).
    gold: the reference answer string.
    grader: "number", "math" or "letter".
  """
  if grader == "letter":
    return extract_letter(completion) == gold.strip().upper()
  if grader == "number":
    got = extract_number(completion)
    a, b = (None if got is None else _to_float(got)), _to_float(gold)
    return got is not None and a is not None and b is not None and _close(a, b)
  if grader == "math":
    boxed = last_boxed(completion)
    if boxed is None:
      return False
    got, want = normalize_math(boxed), normalize_math(gold)
    if got == want:
      return True
    a, b = _to_float(got), _to_float(want)
    return a is not None and b is not None and _close(a, b)
  raise ValueError(
    f"grader must be 'number', 'math' or 'letter'; got grader={grader!r}"
  )
