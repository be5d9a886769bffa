"""Helpers for the test tiers (see tests/conftest.py): a plain run is the
fast tier and deselects what is marked `slow` or `heavy`; `--all` (the
README's test command, CI) adds the slow tier; `--heavy` adds the heavy
tier.

The heavy tier holds what CI's budget (the whole CI under 50 minutes on 2
cores) cannot:
  * a parametrized family's cases beyond those that run in the fast and
    slow tiers (`fast_only`);
  * the grids whose fast cases already cover each mechanism: the execution
    modes' rule x batch grid, the decoding engine's backbones x state modes,
    self-speculative decoding's draft grid, the encoder exit methods,
    DYNAMAX's classifiers, ExIt's domains and training loops, Mamba-2,
    Dynamic Perceiver's two models and the EfficientNet-Lite weights (the
    dynamic_perceiver smoke run loads and uses them), the benchmark
    scripts' quick runs (all but the sharding benchmark);
  * the checks that repeat an experiment at a larger size, in part or on a
    simulated mesh: one training step of each preset (but the palbert_glue
    and dynamax transformer smoke steps, in the fast tier),
    dynamic_perceiver's joint smoke, LYNX on SmolLM2, the experiment smokes
    on 8 devices.
Measured in a fresh-clone CI run on 2 cores (2026-12-07), before the heavy
tier existed: the Python 3.12 phase took 108 min (the official CI, alike,
was stopped at its 90-minute limit); the experiment smokes and notebooks
were about half of it.
"""

import pytest

slow = pytest.mark.slow
heavy = pytest.mark.heavy


def fast_only(values, *fast, slow_too=()):
  """`values` as parametrize arguments: those in `fast` run in the fast
  tier, those in `slow_too` are marked slow (CI runs them), the others are
  marked heavy. A tuple is one set of arguments (for a parametrize with
  several names). Test ids stay the same."""
  values = list(values)
  missing = [v for v in (*fast, *slow_too) if v not in values]
  assert not missing, f"{missing} not among {values}"

  def param(v, mark):
    return pytest.param(*(v if isinstance(v, tuple) else (v,)), marks=mark)

  return [
    v if v in fast else param(v, slow if v in slow_too else heavy)
    for v in values
  ]
