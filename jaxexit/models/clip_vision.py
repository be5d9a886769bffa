"""CLIP's vision transformer, the image encoder of LLaVA.

Radford et al. 2021 (CLIP), in Hugging Face's `CLIPVisionModel` layout: a
bias-free patch projection (HF's stride-p convolution, here a matmul over
flattened patches), a learned class embedding prepended to the patches,
learned position embeddings, a LayerNorm before the encoder (HF
`pre_layrnorm`), pre-LN blocks x + attn(LN(x)), x + MLP(LN(x)) with biased
q/k/v/out projections and a `quick_gelu` MLP (x · σ(1.702 x)), and
`post_layernorm`, which HF applies to the class token only (the pooled
output). In float32 every hidden state matches `CLIPVisionModel` within
1e-5 (tests).

LLaVA (Liu et al. 2023, "Improved baselines", LLaVA-1.5) reads the patch
tokens of the penultimate block: `features(images, layer=-2)`.

Axes: B batch, P patches, N image tokens (P + 1 with the class token, P
without), D width (HF `hidden_size`), H heads, K head dim, F MLP width (HF
`intermediate_size`), L blocks; images are [B, S, S, 3] pixels (S =
`image_size`; channels last, where HF takes [B, 3, S, S]).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from jaxexit import checks
from jaxexit.models.bert import ACTIVATIONS, make_layer_norm, make_linear
from jaxexit.typing import Array, Float, PyTree


def quick_gelu(x: Array) -> Array:
  """CLIP's sigmoid approximation of GELU: x · σ(1.702 x)."""
  return x * jax.nn.sigmoid(1.702 * x)


# HF `ACT2FN` names.
CLIP_ACTIVATIONS = {**ACTIVATIONS, "quick_gelu": quick_gelu}

# transformers' `CLIPVisionConfig` defaults, for keys a config.json omits.
_HF_DEFAULTS = dict(
  hidden_size=768,
  intermediate_size=3072,
  num_hidden_layers=12,
  num_attention_heads=12,
  num_channels=3,
  image_size=224,
  patch_size=32,
  hidden_act="quick_gelu",
  layer_norm_eps=1e-5,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClipVisionConfig:
  """Sizes of `ClipVision` (HF `CLIPVisionConfig` names in parentheses).

  Attributes:
    image_size: S, input height = width in pixels.
    patch_size: patch side p; must divide `image_size`.
    width: D (`hidden_size`).
    num_layers: L (`num_hidden_layers`).
    num_heads: H (`num_attention_heads`); must divide D.
    mlp_dim: F (`intermediate_size`).
    hidden_act: MLP activation, a key of `CLIP_ACTIVATIONS`.
    layer_norm_eps: LayerNorm epsilon.
    dtype: compute dtype; attention softmax is float32.
    param_dtype: parameter dtype.
  """

  image_size: int = 224
  patch_size: int = 32
  width: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  hidden_act: str = "quick_gelu"
  layer_norm_eps: float = 1e-5
  dtype: DTypeLike = jnp.float32
  param_dtype: DTypeLike = jnp.float32

  def __post_init__(self):
    for name in (
      "image_size",
      "patch_size",
      "width",
      "num_layers",
      "num_heads",
      "mlp_dim",
    ):
      checks.positive_int(f"ClipVisionConfig.{name}", getattr(self, name))
    if self.image_size % self.patch_size:
      raise ValueError(
        f"ClipVisionConfig.image_size={self.image_size} must be divisible "
        f"by patch_size={self.patch_size}"
      )
    if self.width % self.num_heads:
      raise ValueError(
        f"ClipVisionConfig.width={self.width} must be "
        f"divisible by num_heads={self.num_heads}"
      )
    checks.one_of(
      "ClipVisionConfig.hidden_act", self.hidden_act, sorted(CLIP_ACTIVATIONS)
    )
    checks.in_range(
      "ClipVisionConfig.layer_norm_eps",
      self.layer_norm_eps,
      0,
      math.inf,
      low_open=True,
      high_open=True,
    )

  @property
  def num_patches(self) -> int:
    """P = (image_size / patch_size)²."""
    return (self.image_size // self.patch_size) ** 2

  def blocks_before(self, layer: int) -> int:
    """How many blocks produce HF `hidden_states[layer]` (an index into the
    L + 1 hidden states, negative from the end as in Python).

    Raises:
      ValueError: if `layer` is not an int in [-(L + 1), L].
    """
    n = self.num_layers
    if (
      isinstance(layer, bool)
      or not isinstance(layer, int)
      or not (-(n + 1) <= layer <= n)
    ):
      raise ValueError(
        f"layer={layer!r} must be an int in [{-(n + 1)}, "
        f"{n}] (an index into the {n + 1} hidden states)"
      )
    return layer % (n + 1)

  @classmethod
  def from_hf(cls, hf: dict, **overrides) -> "ClipVisionConfig":
    """Reads a Hugging Face `CLIPVisionConfig` dict (e.g. a LLaVA
    `config.json`'s `vision_config`); omitted keys take transformers'
    defaults.

    Args:
      hf: the parsed config.
      **overrides: fields to set instead (`dtype`, ...).

    Raises:
      ValueError: for another model_type or num_channels != 3.
    """
    model_type = hf.get("model_type", "clip_vision_model")
    if model_type != "clip_vision_model":
      raise ValueError(
        f"vision config model_type={model_type!r}; expected 'clip_vision_model'"
      )
    hf = {**_HF_DEFAULTS, **hf}
    if hf["num_channels"] != 3:
      raise ValueError(
        f"num_channels={hf['num_channels']!r} unsupported; only RGB (3)"
      )
    kw = dict(
      image_size=hf["image_size"],
      patch_size=hf["patch_size"],
      width=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"],
      mlp_dim=hf["intermediate_size"],
      hidden_act=hf["hidden_act"],
      layer_norm_eps=hf["layer_norm_eps"],
    )
    kw.update(overrides)
    return cls(**kw)


class ClipLayer(nnx.Module):
  """Pre-LN block: x + out(MHA(LN₁(x))), then x + fc2(act(fc1(LN₂(x)))).

  Attribute names follow HF's `encoder.layers.{i}.*` tensor names
  (`self_attn.` and `mlp.` dropped).
  """

  def __init__(self, cfg: ClipVisionConfig, *, rngs: nnx.Rngs):
    d = cfg.width
    self.layer_norm1 = make_layer_norm(cfg, d, rngs)
    self.q_proj = make_linear(cfg, d, d, rngs)
    self.k_proj = make_linear(cfg, d, d, rngs)
    self.v_proj = make_linear(cfg, d, d, rngs)
    self.out_proj = make_linear(cfg, d, d, rngs)
    self.layer_norm2 = make_layer_norm(cfg, d, rngs)
    self.fc1 = make_linear(cfg, d, cfg.mlp_dim, rngs)
    self.fc2 = make_linear(cfg, cfg.mlp_dim, d, rngs)
    self.num_heads = cfg.num_heads
    self.hidden_act = cfg.hidden_act

  def __call__(self, x: Float[Array, "B N D"]) -> Float[Array, "B N D"]:
    b, n, d = x.shape
    split = lambda y: y.reshape(b, n, self.num_heads, -1)  # [B, N, H, K]
    h = self.layer_norm1(x)
    # XLA path: float32 logits and softmax, 1/√K scaling, no mask.
    attn = jax.nn.dot_product_attention(
      split(self.q_proj(h)), split(self.k_proj(h)), split(self.v_proj(h))
    )
    x = x + self.out_proj(attn.reshape(b, n, d))
    act = CLIP_ACTIVATIONS[self.hidden_act]
    return x + self.fc2(act(self.fc1(self.layer_norm2(x))))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ClipVisionOutput:
  """`ClipVision.__call__` output (HF `output_hidden_states` convention).

  Attributes:
    hidden_states: L + 1 arrays [B, P + 1, D]: the embeddings after
      `pre_layrnorm`, then the output of every block (the last one is HF's
      `last_hidden_state`, not normed).
    pooled: [B, D], `post_layernorm` of the last block's class token.
  """

  hidden_states: PyTree
  pooled: PyTree


class ClipVision(nnx.Module):
  """CLIP vision transformer (HF `CLIPVisionModel`).

  Args:
    cfg: sizes.
    rngs: parameter initialisation (weights are usually loaded with
      `jaxexit.models.llava_weights`).
  """

  def __init__(self, cfg: ClipVisionConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d, p = cfg.width, cfg.patch_size
    init = nnx.initializers.normal(0.02)
    # Rows of the kernel run over (row, column, channel) of a patch.
    self.patch_embedding = nnx.Linear(
      p * p * 3,
      d,
      use_bias=False,
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      kernel_init=init,
      rngs=rngs,
    )
    self.class_embedding = nnx.Param(init(rngs.params(), (d,), cfg.param_dtype))
    self.position_embedding = nnx.Param(
      init(rngs.params(), (cfg.num_patches + 1, d), cfg.param_dtype)
    )
    self.pre_layrnorm = make_layer_norm(cfg, d, rngs)
    self.layers = nnx.List(
      [ClipLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)]
    )
    self.post_layernorm = make_layer_norm(cfg, d, rngs)

  def embed(self, images: Float[Array, "B S S 3"]) -> Float[Array, "B N D"]:
    """Class token + patch embeddings + positions, after `pre_layrnorm`
    (the input of block 0, N = P + 1)."""
    size = self.cfg.image_size
    if images.ndim != 4 or images.shape[1:] != (size, size, 3):
      raise ValueError(
        f"images must be [B, {size}, {size}, 3] for ClipVisionConfig."
        f"image_size={size}; got images.shape={images.shape}"
      )
    b, p = images.shape[0], self.cfg.patch_size
    g = size // p
    x = images.astype(self.cfg.dtype).reshape(b, g, p, g, p, 3)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, p * p * 3)  # [B,P,·]
    x = self.patch_embedding(x)  # [B, P, D]
    cls = jnp.broadcast_to(
      self.class_embedding[...].astype(x.dtype), (b, 1, x.shape[-1])
    )
    h = jnp.concatenate([cls, x], axis=1)  # [B, N, D]
    h = h + self.position_embedding[...].astype(x.dtype)[None]
    return self.pre_layrnorm(h)

  def features(
    self,
    images: Float[Array, "B S S 3"],
    layer: int = -2,
    *,
    drop_cls: bool = True,
  ) -> Float[Array, "B N D"]:
    """Hidden state `layer` (HF `hidden_states[layer]`), running only the
    blocks it needs: `layer=-2` with `drop_cls` is LLaVA-1.5's image
    feature ("default" select strategy; N = P, or P + 1 with the class
    token when `drop_cls` is False).

    Raises:
      ValueError: wrong image shape or `layer` out of range.
    """
    num_blocks = self.cfg.blocks_before(layer)
    h = self.embed(images)
    for block in self.layers[:num_blocks]:
      h = block(h)
    return h[:, 1:] if drop_cls else h

  def __call__(self, images: Float[Array, "B S S 3"]) -> ClipVisionOutput:
    """Every hidden state and the pooled class token.

    Args:
      images: [B, S, S, 3] normalised pixels (HF's `pixel_values` moved to
        channels last).

    Raises:
      ValueError: if the images are not [B, S, S, 3].
    """
    h = self.embed(images)
    hidden = [h]
    for block in self.layers:
      h = block(h)
      hidden.append(h)
    return ClipVisionOutput(
      hidden_states=tuple(hidden), pooled=self.post_layernorm(h[:, 0])
    )
