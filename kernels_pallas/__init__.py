"""Pallas kernels for jaxexit; depends on jax only, never imports jaxexit.

One kernel per module, each beside its pure-jnp reference:

  position_attention   flash attention over a compacted token buffer,
                       causal by persistent position id (custom_vjp)
  selection_scores     attention of a few query rows, averaged over heads
                       and rows, on a key span (token-pruning scores)

Import from the modules (`from kernels_pallas.position_attention import
position_attention`): the package does not re-export the functions, whose
names equal their modules'.
"""
