"""Activation bytes a pass keeps per token: the memory plan's formulas.

A `Rate` maps the mesh's tensor size t to bytes per token. With a bytes
per element of the compute dtype, b rows per device, per token and block
of width D, key/value width Dkv, MLP width F with m saved F-wide tensors
(SwiGLU 3, GELU 2), H heads over T keys:

  transformer block  a (4D + (2D + 2Dkv + mF) / t) + 4 H T / t
    (block input, both norm outputs, the attention residual; q, k, v,
    attention output, MLP hidden; float32 attention probabilities)
  Mamba-1 block (width D, inner E, state S, rank R)
    a (2D + R + 2S + 6E / t) + 4 * SCAN_COPIES * E S / t: float32 [T, E, S]
    scan tensors, calibrated on XLA:CPU (`SCAN_COPIES`)
  Mamba-2 block (inner E, G groups, S, H heads of K, chunk Q)
    a (2D + (5E + 4GS + H) / t) + 4 (2 H Q + H K S / Q) / t
  head: float32 logits and their gradient, 2 * 4 V / t

A backward pass over L blocks keeps b T (L A + head) bytes without remat
and b T (L a D + A + head) with remat per block (each block's input, then
one block recomputed at a time); a forward-only pass holds one block's
working set, b T (A + head) (`Stack.saved`). `jaxexit.sharding.workloads`
builds them from model configs (`lm_stack`, `clip_stack`).

Axes: b rows per device, T tokens, L blocks, t tensor size.
"""

import dataclasses
from collections.abc import Callable

Rate = Callable[[int], float]  # tensor size -> bytes per token
F32 = 4  # softmax, logits and scans run in float32 in every dtype
# Float32 [T, E, S] tensors a Mamba-1 block's backward keeps per token:
# measured, the growth of XLA:CPU's temp bytes from T = 512 to 1024 on 2
# Mamba-130m blocks (2 rows per device) is 1.54 MiB per token and block,
# 16.4 x 4 E S bytes (lax.associative_scan keeps every level of its tree,
# and the backward their cotangents). Counting decay, input and states
# alone (3) gave 0.22 of it. `benchmarks/sharding.py` rechecks it.
SCAN_COPIES = 16


def no_bytes(tensor: int) -> float:
  """A `Rate` of nothing."""
  del tensor
  return 0.0


def transformer_block(
  d: int, dkv: int, f: int, m: int, heads: int, keys: int, elem: int
) -> Rate:
  """Attention + MLP block over `keys` positions (module doc)."""
  return lambda t: (
    elem * (4 * d + (2 * d + 2 * dkv + m * f) / t) + F32 * heads * keys / t
  )


def mamba1_block(d: int, e: int, s: int, r: int, elem: int) -> Rate:
  """Mamba-1 block of width D, inner E, state S, rank R (module doc)."""
  return lambda t: (
    elem * (2 * d + r + 2 * s + 6 * e / t) + F32 * SCAN_COPIES * e * s / t
  )


def mamba2_block(
  d: int, e: int, gs: int, h: int, k: int, s: int, q: int, elem: int
) -> Rate:
  """Mamba-2 block: width D, inner E, G x S group states, H heads of K,
  chunk Q (module doc)."""
  return lambda t: (
    elem * (2 * d + (5 * e + 4 * gs + h) / t)
    + F32 * (2 * h * q + h * k * s / q) / t
  )


def logits(vocab: int) -> Rate:
  """Float32 logits and their gradient, per token."""
  return lambda t: 2 * F32 * vocab / t


@dataclasses.dataclass(frozen=True)
class Stack:
  """`layers` blocks of `width` over `tokens` positions per row.

  Attributes:
    layers, tokens, width: L, T, D.
    block: saved bytes per token and block.
    head: bytes per token after the last block (e.g. `logits`).
    forward: a forward-only pass (holds one block's working set).
    elem: bytes per element of a block input (what remat keeps).
  """

  layers: int
  tokens: int
  width: int
  block: Rate
  head: Rate = no_bytes
  forward: bool = False
  elem: int = F32

  def saved(self, tensor: int, remat: bool) -> float:
    """Bytes per row the pass keeps at tensor size `tensor`."""
    block, head = self.block(tensor), self.head(tensor)
    if self.forward:
      return self.tokens * (block + head)
    if remat:
      kept = self.layers * self.elem * self.width + block
    else:
      kept = self.layers * block
    return self.tokens * (kept + head)
