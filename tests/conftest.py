"""Test defaults: shape checks at run time, strict rank promotion, CPU.

Known flake (2026-11-29): in the full suite under `-n auto`, one xdist
worker twice died with a segfault inside XLA's CPU compiler while compiling a
small slice in `tests/jaxexit/methods/jei_dnn_test.py` (the test passes
alone and next to its neighbours). The root cause is not found; pyproject's
addopts rerun a test once only when its worker crashed (`--only-rerun
crashed`), never an ordinary failure.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
from jaxtyping import install_import_hook  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

# jaxtyping + beartype check every annotated public boundary of the library.
install_import_hook(["jaxexit", "kernels_pallas"], "beartype.beartype")
