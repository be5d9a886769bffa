"""jaxexit: dynamic compute for JAX (early exits, halting, pruning)."""
