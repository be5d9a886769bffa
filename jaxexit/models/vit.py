"""A Vision Transformer whose blocks the execution modes can run one by one.

Dosovitskiy et al. 2021 (ViT): non-overlapping patches → linear embedding,
a learned CLS token and learned position embeddings, pre-LN blocks
(x + MHA(LN(x)), x + MLP(LN(x)) with GELU), a final LayerNorm and a linear
head on the CLS token. `VIT_CONFIGS["t2t_vit_7_like"]` has the sizes of
T2T-ViT-7 (width 256, depth 7, 4 heads, MLP ratio 2), the JEI-DNN backbone
(encoder_exits.md §8.1), with a plain patch embedding instead of the
tokens-to-token module.

Exits read the CLS token through the final LayerNorm (`cls_features`), as
JEI-DNN's inference modules do (§8.2). `exit_stack(heads)` puts caller
supplied heads after blocks 0..L-2 and the backbone head after the last
block.

Axes: B batch, N image tokens (P patches + CLS), D width, H heads, K head
dim, F MLP width, L blocks, C classes; images are [B, H, W, 3] (here H and W
are pixel sizes, not heads).
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from jaxexit import checks
from jaxexit.execution.adapter import (
  PerLayer,
  exit_stack,
  functional,
  indexed,
  layer_module,
  stacked,
)
from jaxexit.execution.stack import ExitStack
from jaxexit.exits.outputs import ExitHeadOutput
from jaxexit.models.bert import make_layer_norm, make_linear
from jaxexit.nn.functional import dropout
from jaxexit.nn.remat import remat_call
from jaxexit.typing import Array, Float, PRNGKeyArray


@dataclasses.dataclass(frozen=True, kw_only=True)
class ViTConfig:
  """Sizes of `ViT`.

  Attributes:
    image_size: input height = width in pixels.
    patch_size: patch side; must divide `image_size`.
    num_classes: C.
    width: D.
    depth: L, number of blocks (≥ 2: one exit before the last block).
    num_heads: H; must divide D.
    mlp_dim: F.
    dropout: dropout rate after the embedding, attention and MLP (training
      only).
    layer_norm_eps: LayerNorm epsilon.
    dtype: compute dtype; attention softmax and logits are float32.
    param_dtype: parameter dtype.
  """

  image_size: int = 32
  patch_size: int = 4
  num_classes: int = 10
  width: int = 128
  depth: int = 7
  num_heads: int = 4
  mlp_dim: int = 256
  dropout: float = 0.0
  layer_norm_eps: float = 1e-6
  dtype: DTypeLike = jnp.float32
  param_dtype: DTypeLike = jnp.float32

  def __post_init__(self):
    for name in (
      "image_size",
      "patch_size",
      "num_classes",
      "width",
      "num_heads",
      "mlp_dim",
    ):
      checks.positive_int(f"ViTConfig.{name}", getattr(self, name))
    checks.positive_int("ViTConfig.depth", self.depth, minimum=2)
    if self.image_size % self.patch_size:
      raise ValueError(
        f"ViTConfig.image_size={self.image_size} must be divisible by "
        f"patch_size={self.patch_size}"
      )
    if self.width % self.num_heads:
      raise ValueError(
        f"ViTConfig.width={self.width} must be divisible by "
        f"num_heads={self.num_heads}"
      )
    checks.in_range("ViTConfig.dropout", self.dropout, 0.0, 1.0, high_open=True)

  @property
  def num_patches(self) -> int:
    """P = (image_size / patch_size)²."""
    return (self.image_size // self.patch_size) ** 2

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads


VIT_CONFIGS = {
  # Unit tests and the smoke preset.
  "tiny": ViTConfig(
    image_size=32, patch_size=8, width=32, depth=3, num_heads=2, mlp_dim=64
  ),
  # The cpu preset: CIFAR-10 at native 32 x 32, 16 patches of 8 x 8. On 2
  # CPU cores it reached 37 % test accuracy in 3.5 min of training, vs
  # 33.5 % for 64 patches of 4 x 4 at width 64 in the same time.
  "cifar_small": ViTConfig(
    image_size=32, patch_size=8, width=128, depth=7, num_heads=4, mlp_dim=256
  ),
  # T2T-ViT-7 sizes on 224 x 224 inputs: 14 x 14 = 196 tokens, the token
  # count T2T's soft split reaches (§8.1 resizes CIFAR to 224).
  "t2t_vit_7_like": ViTConfig(
    image_size=224, patch_size=16, width=256, depth=7, num_heads=4, mlp_dim=512
  ),
}


class Block(nnx.Module):
  """Pre-LN block: x + MHA(LN(x)), then x + MLP(LN(x)) (GELU)."""

  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    d = cfg.width
    self.attn_norm = make_layer_norm(cfg, d, rngs)
    self.qkv = make_linear(cfg, d, 3 * d, rngs)
    self.attn_out = make_linear(cfg, d, d, rngs)
    self.mlp_norm = make_layer_norm(cfg, d, rngs)
    self.mlp_in = make_linear(cfg, d, cfg.mlp_dim, rngs)
    self.mlp_out = make_linear(cfg, cfg.mlp_dim, d, rngs)
    self.num_heads = cfg.num_heads
    self.dropout = cfg.dropout

  def __call__(
    self, x: Float[Array, "B N D"], dropout_key: PRNGKeyArray | None = None
  ) -> Float[Array, "B N D"]:
    """Applies the block; `dropout_key` (training) turns dropout on."""
    b, n, d = x.shape
    keys = (
      [None] * 2
      if dropout_key is None
      else list(jax.random.split(dropout_key, 2))
    )
    qkv = self.qkv(self.attn_norm(x)).reshape(b, n, 3, self.num_heads, -1)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, H, K]
    logits = jnp.einsum(
      "BNHK,BMHK->BHNM", q, k, preferred_element_type=jnp.float32
    )
    probs = jax.nn.softmax(logits / math.sqrt(q.shape[-1]), axis=-1)
    attn = jnp.einsum("BHNM,BMHK->BNHK", probs.astype(v.dtype), v)
    x = x + dropout(self.attn_out(attn.reshape(b, n, d)), self.dropout, keys[0])
    h = jax.nn.gelu(self.mlp_in(self.mlp_norm(x)), approximate=False)
    return x + dropout(self.mlp_out(h), self.dropout, keys[1])


def apply_block(block: Block, carry: dict) -> dict:
  """`block` on `carry = {"h": [B, N, D]}` (inference)."""
  return {"h": block(carry["h"])}


def apply_block_with_dropout(
  blocks: Block, layer, carry: dict, *, dropout_key: PRNGKeyArray
) -> dict:
  """Block `layer` of the stacked `blocks` with dropout drawn from
  `fold_in(dropout_key, layer)` (training)."""
  key = jax.random.fold_in(dropout_key, layer)
  return {"h": layer_module(blocks, layer)(carry["h"], key)}


class ViT(nnx.Module):
  """ViT classifier; block parameters stacked on a leading L axis.

  Args:
    cfg: sizes.
    rngs: parameter initialisation.
  """

  def __init__(self, cfg: ViTConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d = cfg.width
    self.patch_embed = make_linear(cfg, cfg.patch_size**2 * 3, d, rngs)
    init = nnx.initializers.normal(0.02)
    self.cls_token = nnx.Param(init(rngs.params(), (1, 1, d), cfg.param_dtype))
    self.pos_embed = nnx.Param(
      init(rngs.params(), (1, cfg.num_patches + 1, d), cfg.param_dtype)
    )

    @nnx.split_rngs(splits=cfg.depth)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make_blocks(rngs):
      return Block(cfg, rngs=rngs)

    self.blocks = make_blocks(rngs)
    self.norm = make_layer_norm(cfg, d, rngs)
    self.head = make_linear(cfg, d, cfg.num_classes, rngs)

  def _check_images(self, images: Array) -> None:
    size = self.cfg.image_size
    if images.ndim != 4 or images.shape[1:] != (size, size, 3):
      raise ValueError(
        f"images must be [B, {size}, {size}, 3] for ViTConfig.image_size="
        f"{size}; got images.shape={images.shape}"
      )

  def embed(
    self,
    images: Float[Array, "B H W 3"],
    *,
    dropout_key: PRNGKeyArray | None = None,
  ) -> dict:
    """The initial carry: patches, CLS token and positions.

    Args:
      images: normalised float images of the configured size.
      dropout_key: training only.

    Returns:
      `{"h": [B, P + 1, D]}`, the CLS token first.
    """
    self._check_images(images)
    b, p = images.shape[0], self.cfg.patch_size
    g = self.cfg.image_size // p
    x = images.astype(self.cfg.dtype).reshape(b, g, p, g, p, 3)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, p * p * 3)  # [B,P,·]
    x = self.patch_embed(x)  # [B, P, D]
    cls = jnp.broadcast_to(
      self.cls_token[...].astype(x.dtype), (b, 1, x.shape[-1])
    )
    h = jnp.concatenate([cls, x], axis=1) + self.pos_embed[...].astype(x.dtype)
    return {"h": dropout(h, self.cfg.dropout, dropout_key)}

  def exit_layers(self, *, dropout_key: PRNGKeyArray | None = None) -> PerLayer:
    """The stacked blocks as `jaxexit.execution.exit_stack` takes them, on
    `carry = {"h": [B, N, D]}`; `dropout_key` (training) turns dropout on.
    """
    if dropout_key is None:
      return stacked(self.blocks, apply_block)
    return indexed(
      self.blocks,
      self.cfg.depth,
      functools.partial(apply_block_with_dropout, dropout_key=dropout_key),
    )

  def cls_features(self, carry: dict) -> Float[Array, "B D"]:
    """The final LayerNorm of the CLS token (what every exit reads)."""
    return self.norm(carry["h"][:, 0])

  def cls_per_block(
    self, images: Float[Array, "B H W 3"]
  ) -> Float[Array, "B L D"]:
    """`cls_features` after every block (JEI-DNN's cached IM inputs)."""
    layer_fn, params = functional(self.exit_layers())

    def body(carry, layer):
      carry = layer_fn(params, layer, carry)
      return carry, self.cls_features(carry)

    _, feats = jax.lax.scan(
      body, self.embed(images), jnp.arange(self.cfg.depth, dtype=jnp.int32)
    )
    return jnp.moveaxis(feats, 0, 1)

  def __call__(
    self,
    images: Float[Array, "B H W 3"],
    *,
    dropout_key: PRNGKeyArray | None = None,
  ) -> Float[Array, "B C"]:
    """Logits of the backbone head after all blocks."""
    keys = (
      (None, None)
      if dropout_key is None
      else tuple(jax.random.split(dropout_key))
    )
    layer_fn, params = functional(self.exit_layers(dropout_key=keys[1]))
    carry = jax.lax.fori_loop(
      0,
      self.cfg.depth,
      lambda i, c: remat_call(layer_fn, params, i, c),
      self.embed(images, dropout_key=keys[0]),
    )
    return self.head(self.cls_features(carry)).astype(jnp.float32)

  def exit_stack(self, heads: nnx.Module) -> tuple[ExitStack, nnx.State]:
    """`(stack, params)`: `heads` after blocks 0..L-2, the backbone head last.

    Args:
      heads: a module called as `heads(layer, features) -> ExitHeadOutput`
        with `features = cls_features(carry)` [B, D] and `layer` in
        [0, L - 2] (a Python int or traced int32); its output must have
        `logits` [B, C].

    Returns:
      The `ExitStack` and its parameters (`params["heads"]` holds the final
      `norm`, the backbone `head` and the caller's `exits`). At the last
      block the head output is `logits = head(features)` with every other
      field of `heads`'s output set to ones: every mode exits there anyway,
      so those values never decide an exit (a JEI-DNN gate of 1 reads
      "exit").
    """
    parts = nnx.Dict(norm=self.norm, head=self.head, exits=heads)
    return exit_stack(
      self.exit_layers(),
      indexed(parts, self.cfg.depth, ExitOrFinalHead(self.cfg.depth - 1)),
    )


@dataclasses.dataclass(frozen=True)
class ExitOrFinalHead:
  """`parts["exits"](layer, features)` before block `last`, the backbone
  head at it (`lax.cond` for a traced layer; one branch for a Python int).

  `parts` holds the final `norm`, the backbone `head` and the `exits`.
  """

  last: int

  def __call__(self, parts: nnx.Dict, layer, carry: dict) -> ExitHeadOutput:
    feats = parts["norm"](carry["h"][:, 0])

    def exit_out(i):
      return parts["exits"](i, feats)

    def final_out():
      like = jax.eval_shape(lambda: exit_out(0))
      out = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), like)
      logits = parts["head"](feats).astype(jnp.float32)
      return dataclasses.replace(out, logits=logits.astype(out.logits.dtype))

    if isinstance(layer, int):  # static: trace (and count) one branch
      return final_out() if layer == self.last else exit_out(layer)
    return jax.lax.cond(
      layer == self.last,
      final_out,
      lambda: exit_out(jnp.minimum(layer, self.last - 1)),
    )
