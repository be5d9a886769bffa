"""ALBERT encoder: factorised embeddings and one shared Transformer layer.

Lan et al. 2020 (ALBERT), as PALBERT uses it (encoder_exits.md §3.1): token,
position and type embeddings of width E (128 in albert-base-v2) are
layer-normalised, projected E → D, and ONE `TransformerLayer` is applied L
times. Numerically identical to Hugging Face `AlbertModel` in float32 for
`num_hidden_groups = inner_group_num = 1` (every released ALBERT).

Because the layer is shared, `exit_layers()` is `shared(layer, L)`: no
layer index selects parameters, and the execution modes run the same weights
at every step (a `lax.scan` of one module).

Axes: B batch, T tokens, E embedding width, D width (HF `hidden_size`),
H heads, K head dim, F MLP width, L layer applications, V vocabulary.
"""

import dataclasses

import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from jaxexit import checks
from jaxexit.execution.adapter import PerLayer, shared
from jaxexit.models.bert import (
  Encoder,
  TransformerLayer,
  apply_layer,
  attention_mask_or_ones,
  check_positions,
  check_transformer_sizes,
  make_embed,
  make_layer_norm,
  make_linear,
)
from jaxexit.typing import Array, Bool, Int


@dataclasses.dataclass(frozen=True, kw_only=True)
class AlbertConfig:
  """Sizes of `AlbertEncoder` (defaults: albert-base-v2).

  Attributes:
    vocab_size: V.
    embedding_size: E, width of the factorised embeddings.
    hidden_size: D.
    num_layers: L, applications of the shared layer (`num_hidden_layers`).
    num_heads: H (`num_attention_heads`).
    intermediate_size: F.
    max_position_embeddings: rows of the position table.
    type_vocab_size: rows of the token-type table.
    layer_norm_eps: LayerNorm epsilon.
    hidden_act: MLP activation; ALBERT uses "gelu_new" (tanh approximation).
    pad_token_id: padding id.
    dtype: compute dtype; softmax is always float32.
    param_dtype: parameter dtype.
  """

  vocab_size: int = 30000
  embedding_size: int = 128
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu_new"
  pad_token_id: int = 0
  dtype: DTypeLike = jnp.float32
  param_dtype: DTypeLike = jnp.float32

  def __post_init__(self):
    check_transformer_sizes(self)
    for field in ("embedding_size", "type_vocab_size"):
      if getattr(self, field) < 1:
        raise ValueError(
          f"AlbertConfig.{field} must be >= 1; got {getattr(self, field)}"
        )

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @classmethod
  def from_hf_config(cls, hf: dict, **overrides) -> "AlbertConfig":
    """Reads a Hugging Face ALBERT `config.json` dict.

    Raises:
      ValueError: for layer groups (`num_hidden_groups`, `inner_group_num`
        other than 1) or non-absolute position embeddings.
    """
    for key in ("num_hidden_groups", "inner_group_num"):
      if hf.get(key, 1) != 1:
        raise ValueError(
          f"config.json {key}={hf[key]} unsupported; only 1 "
          "(one shared layer, as in every released ALBERT)"
        )
    pos_type = hf.get("position_embedding_type", "absolute")
    if pos_type != "absolute":
      raise ValueError(
        f"position_embedding_type={pos_type!r} unsupported; only 'absolute'"
      )
    kw = dict(
      vocab_size=hf["vocab_size"],
      embedding_size=hf.get("embedding_size", 128),
      hidden_size=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"],
      intermediate_size=hf["intermediate_size"],
      max_position_embeddings=hf.get("max_position_embeddings", 512),
      type_vocab_size=hf.get("type_vocab_size", 2),
      layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
      hidden_act=hf.get("hidden_act", "gelu_new"),
      pad_token_id=hf.get("pad_token_id", 0) or 0,
    )
    kw.update(overrides)
    return cls(**kw)


class AlbertEncoder(Encoder):
  """ALBERT: E-wide embeddings, E → D projection, one shared layer, pooler.

  Args:
    cfg: sizes.
    rngs: parameter initialisation (weights are usually loaded with
      `jaxexit.models.hf_weights`).
  """

  def __init__(self, cfg: AlbertConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    e, d = cfg.embedding_size, cfg.hidden_size
    self.word_embeddings = make_embed(cfg, cfg.vocab_size, e, rngs)
    self.position_embeddings = make_embed(
      cfg, cfg.max_position_embeddings, e, rngs
    )
    self.token_type_embeddings = make_embed(cfg, cfg.type_vocab_size, e, rngs)
    self.embed_norm = make_layer_norm(cfg, e, rngs)
    self.embed_proj = make_linear(cfg, e, d, rngs)
    self.layer = TransformerLayer(cfg, rngs=rngs)
    self.pooler = make_linear(cfg, d, d, rngs)

  def embed(
    self,
    input_ids: Int[Array, "B T"],
    token_type_ids: Int[Array, "B T"] | None = None,
    attention_mask: Int[Array, "B T"] | Bool[Array, "B T"] | None = None,
  ) -> dict:
    """The initial carry of the backbone (after the E → D projection).

    Args:
      input_ids: [B, T] token ids in [0, V) (checked when concrete).
      token_type_ids: [B, T] segment ids (zeros when None).
      attention_mask: [B, T], 1/True for real tokens (all ones when None).

    Returns:
      `{"h": [B, T, D], "mask": [B, T] bool}`.
    """
    checks.token_ids("input_ids", input_ids, self.cfg.vocab_size)
    t = input_ids.shape[-1]
    positions = jnp.broadcast_to(
      jnp.arange(t, dtype=jnp.int32), input_ids.shape
    )
    check_positions(positions, self.cfg.max_position_embeddings)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    h_e = (
      self.word_embeddings(input_ids)
      + self.position_embeddings(positions)
      + self.token_type_embeddings(token_type_ids)
    )  # [B, T, E]
    h = self.embed_proj(self.embed_norm(h_e))  # [B, T, D]
    return {"h": h, "mask": attention_mask_or_ones(input_ids, attention_mask)}

  def exit_layers(self) -> PerLayer:
    """The one shared layer applied L times, as `exit_stack` takes it."""
    return shared(self.layer, self.cfg.num_layers, apply_layer)
