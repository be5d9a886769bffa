"""A small Transformer encoder with an exit head after every layer.

The reference encoder of the execution modes and their benchmark (post-LN,
BERT-style blocks; exits classify the layer-normalised first token). Paper
encoders (BERT, RoBERTa, ALBERT) have their own modules and loaders; they
expose the same `exit_stack()` so every execution mode runs them.

Axes: B batch, T tokens, D width, H heads, K head dim, F MLP width,
L layers, C classes, V vocabulary.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxexit import checks
from jaxexit.execution.adapter import exit_stack, stacked
from jaxexit.execution.stack import ExitStack
from jaxexit.nn.functional import NEG_INF
from jaxexit.typing import Array, Bool, Float, Int


@dataclasses.dataclass(frozen=True, kw_only=True)
class EncoderConfig:
  """Sizes of `ExitEncoder`."""

  num_layers: int = 12
  d_model: int = 256
  num_heads: int = 4
  d_ff: int = 1024
  vocab_size: int = 1024
  max_len: int = 128
  num_classes: int = 2
  dtype: jnp.dtype = jnp.float32

  def __post_init__(self):
    for name in (
      "num_layers",
      "d_model",
      "num_heads",
      "d_ff",
      "vocab_size",
      "max_len",
      "num_classes",
    ):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(
          f"EncoderConfig.{name} must be an int >= 1; got {value!r}"
        )
    if self.d_model % self.num_heads:
      raise ValueError(
        f"EncoderConfig.d_model={self.d_model} must be divisible by "
        f"num_heads={self.num_heads}"
      )

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads


class EncoderLayer(nnx.Module):
  """Post-LN block: x + MHA(x) → LN → x + MLP(x) → LN."""

  def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
    d, h, k = cfg.d_model, cfg.num_heads, cfg.head_dim
    init = nnx.initializers.normal(0.02)
    self.qkv = nnx.Param(init(rngs.params(), (d, 3, h, k)))
    self.out = nnx.Param(init(rngs.params(), (h, k, d)))
    self.mlp_in = nnx.Linear(d, cfg.d_ff, kernel_init=init, rngs=rngs)
    self.mlp_out = nnx.Linear(cfg.d_ff, d, kernel_init=init, rngs=rngs)
    self.norm1 = nnx.LayerNorm(d, rngs=rngs)
    self.norm2 = nnx.LayerNorm(d, rngs=rngs)
    self.dtype = cfg.dtype

  def __call__(
    self, x: Float[Array, "B T D"], mask: Bool[Array, "B T"]
  ) -> Float[Array, "B T D"]:
    x = x.astype(self.dtype)
    qkv = jnp.einsum("BTD,DSHK->SBTHK", x, self.qkv[...].astype(self.dtype))
    q, k, v = qkv[0], qkv[1], qkv[2]  # [B, T, H, K]
    logits = jnp.einsum(
      "BTHK,BSHK->BHTS", q, k, preferred_element_type=jnp.float32
    )
    logits = logits / math.sqrt(q.shape[-1])
    logits = jnp.where(mask[:, None, None, :], logits, NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    attn = jnp.einsum("BHTS,BSHK->BTHK", probs, v)
    attn = jnp.einsum("BTHK,HKD->BTD", attn, self.out[...].astype(self.dtype))
    x = self.norm1(x + attn)
    return self.norm2(x + self.mlp_out(jax.nn.gelu(self.mlp_in(x))))


class ExitHead(nnx.Module):
  """LayerNorm on the first token, then a linear classifier."""

  def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
    self.norm = nnx.LayerNorm(cfg.d_model, rngs=rngs)
    self.proj = nnx.Linear(cfg.d_model, cfg.num_classes, rngs=rngs)

  def __call__(self, h: Float[Array, "B T D"]) -> Float[Array, "B C"]:
    return self.proj(self.norm(h[:, 0])).astype(jnp.float32)


class ExitEncoder(nnx.Module):
  """Token embedding, L stacked `EncoderLayer`s, an `ExitHead` per layer.

  Layer and head parameters are stacked on a leading L axis (`nnx.vmap`), so
  one layer's weights are a slice: the execution modes index them by layer.
  """

  def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, rngs=rngs)
    self.pos = nnx.Param(
      nnx.initializers.normal(0.02)(rngs.params(), (cfg.max_len, cfg.d_model))
    )

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make_layers(rngs):
      return EncoderLayer(cfg, rngs=rngs), ExitHead(cfg, rngs=rngs)

    self.layers, self.heads = make_layers(rngs)

  def embed_tokens(self, tokens: Int[Array, "B T"]) -> dict:
    """The initial carry: `{"h": [B, T, D], "mask": [B, T]}` (0 = padding).

    Concrete `tokens` must lie in [0, V) (an id past the table would embed
    as NaN, a negative one would wrap around); traced ones only with debug
    checks on (`jaxexit.checks`).
    """
    checks.token_ids("tokens", tokens, self.cfg.vocab_size)
    if tokens.shape[-1] > self.cfg.max_len:
      raise ValueError(
        f"tokens has {tokens.shape[-1]} positions; max_len={self.cfg.max_len}"
      )
    h = self.embed(tokens) + self.pos[...][None, : tokens.shape[-1]]
    return {"h": h.astype(self.cfg.dtype), "mask": tokens != 0}

  def exit_stack(self) -> tuple[ExitStack, nnx.State]:
    """The functional view every execution mode takes: (stack, params)."""
    return exit_stack(
      stacked(self.layers, _apply_layer), stacked(self.heads, _apply_head)
    )


def _apply_layer(layer: EncoderLayer, carry: dict) -> dict:
  return {"h": layer(carry["h"], carry["mask"]), "mask": carry["mask"]}


def _apply_head(head: ExitHead, carry: dict) -> Float[Array, "B C"]:
  return head(carry["h"])
