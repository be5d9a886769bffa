"""ExIt synthetic domains and their registry (exploratory_iteration.md §11)."""

from jaxexit import checks
from jaxexit.exploratory_iteration.domains.base import (
  MODE_BASE,
  MODE_DIVERGE,
  MODE_IMPROVE,
  Domain,
  SFTBatch,
)
from jaxexit.exploratory_iteration.domains.knapsack import (
  Knapsack,
  KnapsackTasks,
)
from jaxexit.exploratory_iteration.domains.permsort import PermSort
from jaxexit.exploratory_iteration.domains.sortchain import (
  SortChain,
  SortChainTasks,
)

DOMAINS = {cls.name: cls for cls in (PermSort, Knapsack, SortChain)}


def make_domain(name: str, **cfg) -> Domain:
  """Builds the domain registered as `name` with its config fields.

  Raises:
    ValueError: for an unknown name or a bad config value.
  """
  checks.one_of("domain", name, tuple(DOMAINS))
  try:
    return DOMAINS[name](**cfg)
  except TypeError as e:  # An unknown keyword.
    raise ValueError(f"bad config for domain {name!r}: {e}") from None


__all__ = [
  "DOMAINS",
  "MODE_BASE",
  "MODE_DIVERGE",
  "MODE_IMPROVE",
  "Domain",
  "Knapsack",
  "KnapsackTasks",
  "PermSort",
  "SFTBatch",
  "SortChain",
  "SortChainTasks",
  "make_domain",
]
