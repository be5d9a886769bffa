"""Test defaults: shape checks at run time, strict rank promotion, CPU."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
from jaxtyping import install_import_hook  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

# jaxtyping + beartype check every annotated public boundary of the library.
install_import_hook(["jaxexit", "kernels_pallas"], "beartype.beartype")
