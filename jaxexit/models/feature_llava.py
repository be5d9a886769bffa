"""LLaVA over precomputed vision features: a projector and a Llama LM.

`FeatureLlavaLM` is `jaxexit.models.llava.LlavaLM` without its vision
tower: the image arrives as a frozen backbone's feature map (e.g. the
stride-16 map of an ImageNet EfficientNet-Lite0, cached once per split by
`jaxexit.models.efficientnet_features.lite_features`), each of its h·w
cells becomes one image token, and LLaVA's 2-layer MLP projector maps the
C channels to the LM width. Only the projector (and the LM) are trained, so
the vision side costs nothing per step.

A conv feature map carries little absolute position (CLIP's patch tokens
carry a learned position embedding; a conv cell only sees its neighbourhood
and the zero padding), and the LM's RoPE ids order the tokens in one
dimension only. With `position_embedding=True` a learned [N, D] table is
added to the projected tokens, so "left of" / "row 2" can be read from a
token; it is part of the token and travels with it through pruning.

Tokens are the map's cells in row-major order (row 0 left to right, then
row 1, ...). The interface the pruned forward needs is `LlavaLM`'s:
`image_embeddings(x) -> [B, N, D]` and `lm`. The map is optionally
layer-normalised over C first (`feature_norm`).

Axes: B batch, N image tokens (h·w), C feature channels, D LM width.
"""

import dataclasses

from flax import nnx

from jaxexit import checks
from jaxexit.models.bert import ACTIVATIONS
from jaxexit.models.llama import LlamaConfig, LlamaLM
from jaxexit.models.llava import Projector
from jaxexit.typing import Array, Float


@dataclasses.dataclass(frozen=True, kw_only=True)
class FeatureLlavaConfig:
  """Sizes of `FeatureLlavaLM`.

  Attributes:
    text: the language model; its dtypes are also the projector's.
    feature_dim: C, channels of the feature map.
    grid: h = w, cells per side of the (square) feature map; N = grid².
    projector_act: activation between the projector's linears, a key of
      `bert.ACTIVATIONS`.
    feature_norm: a LayerNorm over C before the projector (a frozen conv
      map's channels have unequal scales; Lite0's stage2 at 128 px on the
      shapes scenes: std 3.4 to 6.7 per channel, |x| up to 40).
    position_embedding: add a learned [N, D] table to the projected tokens.
    image_token_id: the image placeholder id in the LM's vocabulary.
  """

  text: LlamaConfig
  feature_dim: int
  grid: int
  projector_act: str = "gelu"
  feature_norm: bool = True
  position_embedding: bool = True
  image_token_id: int

  def __post_init__(self):
    if not isinstance(self.text, LlamaConfig):
      raise ValueError(
        f"FeatureLlavaConfig.text must be a LlamaConfig; got {self.text!r}"
      )
    checks.positive_int("FeatureLlavaConfig.feature_dim", self.feature_dim)
    checks.positive_int("FeatureLlavaConfig.grid", self.grid)
    checks.one_of(
      "FeatureLlavaConfig.projector_act",
      self.projector_act,
      sorted(ACTIVATIONS),
    )
    checks.positive_int(
      "FeatureLlavaConfig.image_token_id", self.image_token_id, minimum=0
    )
    if self.image_token_id >= self.text.vocab_size:
      raise ValueError(
        f"FeatureLlavaConfig.image_token_id={self.image_token_id} must be "
        f"< text.vocab_size={self.text.vocab_size}"
      )

  @property
  def num_image_tokens(self) -> int:
    """N = grid², image embeddings per image."""
    return self.grid * self.grid


class FeatureLlavaLM(nnx.Module):
  """`projector` (+ position table) → `lm` (`LlamaLM`) over feature maps.

  Args:
    cfg: sizes.
    rngs: parameter initialisation.
  """

  def __init__(self, cfg: FeatureLlavaConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.norm = nnx.data(None)
    if cfg.feature_norm:
      self.norm = nnx.LayerNorm(
        cfg.feature_dim,
        dtype=cfg.text.dtype,
        param_dtype=cfg.text.param_dtype,
        rngs=rngs,
      )
    self.projector = Projector(cfg, rngs=rngs, in_width=cfg.feature_dim)
    self.lm = LlamaLM(cfg.text, rngs=rngs)
    self.position = nnx.data(None)
    if cfg.position_embedding:
      init = nnx.initializers.normal(0.02)
      shape = (cfg.num_image_tokens, cfg.text.d_model)
      self.position = nnx.Param(
        init(rngs.params(), shape, cfg.text.param_dtype)
      )

  def image_embeddings(
    self, features: Float[Array, "B h w C"]
  ) -> Float[Array, "B N D"]:
    """Projected feature cells, one row of N = h·w embeddings per image.

    Args:
      features: [B, h, w, C] feature maps (any float dtype; cast to the
        LM's compute dtype).

    Raises:
      ValueError: if the map is not [B, grid, grid, feature_dim].
    """
    cfg = self.cfg
    want = (cfg.grid, cfg.grid, cfg.feature_dim)
    if features.ndim != 4 or tuple(features.shape[1:]) != want:
      raise ValueError(
        f"features must be [B, {cfg.grid}, {cfg.grid}, {cfg.feature_dim}] "
        f"(FeatureLlavaConfig grid, feature_dim); got "
        f"features.shape={tuple(features.shape)}"
      )
    b = features.shape[0]
    x = features.reshape(b, cfg.num_image_tokens, cfg.feature_dim)  # [B, N, C]
    x = x.astype(cfg.text.dtype)
    if self.norm is not None:
      x = self.norm(x)
    emb = self.projector(x)  # [B, N, D]
    if self.position is not None:
      emb = emb + self.position[...].astype(emb.dtype)[None]
    return emb
