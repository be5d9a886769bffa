"""Helpers for the test tiers (see tests/conftest.py): a plain run is the
fast tier and deselects what is marked `slow`; `--all` runs every tier."""

import pytest

slow = pytest.mark.slow


def fast_only(values, *fast):
  """`values` as parametrize arguments: those in `fast` run in the fast
  tier, the others are marked slow. A tuple is one set of arguments (for a
  parametrize with several names). Test ids stay the same."""
  values = list(values)
  missing = [v for v in fast if v not in values]
  assert not missing, f"{missing} not among {values}"
  return [
    v
    if v in fast
    else pytest.param(*(v if isinstance(v, tuple) else (v,)), marks=slow)
    for v in values
  ]
