"""Pallas kernels for jaxexit; depends on jax only, never imports jaxexit.

One kernel per module, each beside its pure-jnp reference and its tiles
(a frozen `*Blocks` dataclass with `for_backend("gpu" | "tpu")` defaults):

  position_attention   flash attention over a compacted token buffer,
                       causal by persistent position id (custom_vjp)
  selection_scores     attention of a few query rows, averaged over heads
                       and rows, on a key span (token-pruning scores)
  sharded              both under shard_map over batch and heads

Each kernel has a GPU (Triton) and a TPU (Mosaic) lowering, picked by
`backend=` or the inputs' platform; on CPU both run in interpret mode
(`_common` explains the choice, the tiling rules and the padding;
`position_attention` why Triton rather than Mosaic GPU).

Import from the modules (`from kernels_pallas.position_attention import
position_attention`): the package does not re-export the functions, whose
names equal their modules'.
"""
