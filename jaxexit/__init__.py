"""jaxexit: dynamic compute for JAX (early exits, halting, pruning)."""

from jaxexit.checks import checked, debug_checks

__all__ = ["checked", "debug_checks"]
