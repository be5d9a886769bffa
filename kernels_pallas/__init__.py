"""Pallas kernels for jaxexit; depends on jax only, never imports jaxexit."""
