# Over 400 lines: 362 before ruff format; one encoder family.
"""BERT and RoBERTa encoders as backbones for early-exit methods.

Devlin et al. 2019 (BERT), Liu et al. 2019 (RoBERTa): post-LN Transformer
encoder with learned absolute positions, numerically identical to Hugging
Face `BertModel`/`RobertaModel` in float32 (tested layer by layer). The
encoders expose the backbone only; PABEE, DeeBERT, BERxiT and PALBERT attach
their own exit heads through `exit_layers()` and `pool()`.

One config covers both families. RoBERTa differs only in its embeddings:
positions count non-padding tokens starting at `pad_token_id + 1`
(`create_position_ids_from_input_ids` in HF), and it has one token type.

Axes: B batch, T tokens, D width (HF `hidden_size`), H heads, K head dim,
F MLP width (HF `intermediate_size`), L layers, V vocabulary.
"""

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from jaxexit import checks
from jaxexit.execution.adapter import PerLayer, functional, stacked
from jaxexit.nn.functional import NEG_INF
from jaxexit.nn.remat import remat_call
from jaxexit.typing import Array, Bool, Float, Int

# HF `ACT2FN` names; "gelu" is the exact erf form, "gelu_new" (ALBERT) and
# "gelu_pytorch_tanh" the tanh approximation.
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
  "gelu": functools.partial(jax.nn.gelu, approximate=False),
  "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
  "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
  "relu": jax.nn.relu,
  "silu": jax.nn.silu,
  "swish": jax.nn.silu,
  "tanh": jnp.tanh,
}

MODEL_TYPES = ("bert", "roberta")


def check_transformer_sizes(cfg) -> None:
  """Checks the fields BERT and ALBERT configs share; raises ValueError."""
  name = type(cfg).__name__
  for field in dataclasses.fields(cfg):
    value = getattr(cfg, field.name)
    if field.type is int and (
      isinstance(value, bool) or not isinstance(value, int) or value < 0
    ):
      raise ValueError(
        f"{name}.{field.name} must be an int >= 0; got {value!r}"
      )
  for field in (
    "vocab_size",
    "hidden_size",
    "num_layers",
    "num_heads",
    "intermediate_size",
    "max_position_embeddings",
  ):
    if getattr(cfg, field) < 1:
      raise ValueError(
        f"{name}.{field} must be >= 1; got {getattr(cfg, field)}"
      )
  if cfg.hidden_size % cfg.num_heads:
    raise ValueError(
      f"{name}.hidden_size={cfg.hidden_size} must be divisible by "
      f"num_heads={cfg.num_heads}"
    )
  if cfg.hidden_act not in ACTIVATIONS:
    raise ValueError(
      f"unknown {name}.hidden_act={cfg.hidden_act!r}; "
      f"expected one of {sorted(ACTIVATIONS)}"
    )
  if not cfg.layer_norm_eps > 0:
    raise ValueError(
      f"{name}.layer_norm_eps must be > 0; got {cfg.layer_norm_eps!r}"
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class BertConfig:
  """Sizes of `BertEncoder` (HF `BertConfig`/`RobertaConfig` names in
  parentheses where they differ).

  Attributes:
    model_type: "bert" or "roberta" (position ids, see module docstring).
    vocab_size: V.
    hidden_size: D.
    num_layers: L (`num_hidden_layers`).
    num_heads: H (`num_attention_heads`).
    intermediate_size: F.
    max_position_embeddings: rows of the position table (514 for RoBERTa).
    type_vocab_size: rows of the token-type table (1 for RoBERTa).
    layer_norm_eps: LayerNorm epsilon (1e-12 BERT, 1e-5 RoBERTa).
    hidden_act: MLP activation, a key of `ACTIVATIONS`.
    pad_token_id: padding id (RoBERTa positions start after it).
    dtype: compute dtype; softmax is always float32.
    param_dtype: parameter dtype.
  """

  model_type: str = "bert"
  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_act: str = "gelu"
  pad_token_id: int = 0
  dtype: DTypeLike = jnp.float32
  param_dtype: DTypeLike = jnp.float32

  def __post_init__(self):
    if self.model_type not in MODEL_TYPES:
      raise ValueError(
        f"unknown BertConfig.model_type={self.model_type!r}; "
        f"expected one of {list(MODEL_TYPES)}"
      )
    check_transformer_sizes(self)
    if self.type_vocab_size < 1:
      raise ValueError(
        f"BertConfig.type_vocab_size must be >= 1; got {self.type_vocab_size}"
      )

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @classmethod
  def from_hf_config(cls, hf: dict, **overrides) -> "BertConfig":
    """Reads a Hugging Face `config.json` dict of a BERT or RoBERTa model.

    Args:
      hf: the parsed `config.json`.
      **overrides: fields to set instead (`dtype`, ...).
    """
    model_type = hf.get("model_type", "bert")
    if model_type not in MODEL_TYPES:
      raise ValueError(
        f"config.json model_type={model_type!r} is not one of "
        f"{list(MODEL_TYPES)}"
      )
    pos_type = hf.get("position_embedding_type", "absolute")
    if pos_type != "absolute":
      raise ValueError(
        f"position_embedding_type={pos_type!r} unsupported; only 'absolute'"
      )
    kw = dict(
      model_type=model_type,
      vocab_size=hf["vocab_size"],
      hidden_size=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"],
      intermediate_size=hf["intermediate_size"],
      max_position_embeddings=hf.get("max_position_embeddings", 512),
      type_vocab_size=hf.get("type_vocab_size", 2),
      layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
      hidden_act=hf.get("hidden_act", "gelu"),
      pad_token_id=hf.get("pad_token_id", 1 if model_type == "roberta" else 0)
      or 0,
    )
    kw.update(overrides)
    return cls(**kw)


def make_layer_norm(cfg, size: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
  # Two-pass variance, as torch computes it: the one-pass E[x²]-E[x]² form
  # cancels when |mean| >> std (on MiniLM it moved hidden states 3.9e-6 ->
  # 4.4e-6 from torch; kept for margin under the 1e-5 parity budget).
  return nnx.LayerNorm(
    size,
    epsilon=cfg.layer_norm_eps,
    dtype=cfg.dtype,
    param_dtype=cfg.param_dtype,
    use_fast_variance=False,
    rngs=rngs,
  )


def make_linear(cfg, d_in: int, d_out: int, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(
    d_in,
    d_out,
    dtype=cfg.dtype,
    param_dtype=cfg.param_dtype,
    kernel_init=nnx.initializers.normal(0.02),
    rngs=rngs,
  )


def make_embed(cfg, num: int, size: int, rngs: nnx.Rngs) -> nnx.Embed:
  return nnx.Embed(
    num,
    size,
    dtype=cfg.dtype,
    param_dtype=cfg.param_dtype,
    embedding_init=nnx.initializers.normal(0.02),
    rngs=rngs,
  )


class TransformerLayer(nnx.Module):
  """Post-LN block, HF `BertLayer`/`AlbertLayer` maths.

  h = LN(x + W_o · MHA(x)); out = LN(h + W_2 · act(W_1 · h)).

  Args:
    cfg: a `BertConfig` or `AlbertConfig` (the shared fields).
    rngs: parameter initialisation.
  """

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    d, f = cfg.hidden_size, cfg.intermediate_size
    self.query = make_linear(cfg, d, d, rngs)
    self.key = make_linear(cfg, d, d, rngs)
    self.value = make_linear(cfg, d, d, rngs)
    self.attn_out = make_linear(cfg, d, d, rngs)
    self.attn_norm = make_layer_norm(cfg, d, rngs)
    self.ffn_in = make_linear(cfg, d, f, rngs)
    self.ffn_out = make_linear(cfg, f, d, rngs)
    self.ffn_norm = make_layer_norm(cfg, d, rngs)
    self.num_heads = cfg.num_heads
    self.hidden_act = cfg.hidden_act

  def __call__(
    self, x: Float[Array, "B T D"], mask: Bool[Array, "B T"]
  ) -> Float[Array, "B T D"]:
    """Applies the block; `mask` is False at padding keys."""
    b, t, d = x.shape
    k_dim = d // self.num_heads
    split = lambda y: y.reshape(b, t, self.num_heads, k_dim)  # [B, T, H, K]
    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    logits = jnp.einsum(
      "BTHK,BSHK->BHTS", q, k, preferred_element_type=jnp.float32
    )
    logits = logits / math.sqrt(k_dim)
    logits = jnp.where(mask[:, None, None, :], logits, NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    attn = jnp.einsum("BHTS,BSHK->BTHK", probs, v).reshape(b, t, d)
    h = self.attn_norm(x + self.attn_out(attn))
    act = ACTIVATIONS[self.hidden_act]
    return self.ffn_norm(h + self.ffn_out(act(self.ffn_in(h))))


def apply_layer(layer: TransformerLayer, carry: dict) -> dict:
  """One layer on `carry = {"h": [B, T, D], "mask": [B, T]}`."""
  return {"h": layer(carry["h"], carry["mask"]), "mask": carry["mask"]}


def run_layers(layers: PerLayer, carry: dict) -> Float[Array, "L1 B T D"]:
  """All hidden states `[L + 1, B, T, D]`, the embedding output first."""
  layer_fn, params = functional(layers)

  def body(c, layer):
    c = remat_call(layer_fn, params, layer, c)
    return c, c["h"]

  _, hs = jax.lax.scan(
    body, carry, jnp.arange(layers.num_layers, dtype=jnp.int32)
  )
  return jnp.concatenate([carry["h"][None], hs], axis=0)


def check_positions(positions: Array, max_positions: int) -> None:
  """Raises if a concrete position id overflows the table (skipped in jit:
  an out-of-range gather would silently clamp)."""
  if isinstance(positions, jax.core.Tracer) or positions.size == 0:
    return
  top = int(positions.max())
  if top >= max_positions:
    raise ValueError(
      f"position id {top} needs max_position_embeddings > "
      f"{top}; got max_position_embeddings={max_positions}"
    )


def attention_mask_or_ones(input_ids: Array, attention_mask) -> Array:
  """Bool `[B, T]` key mask; HF's default (None) attends everywhere."""
  if attention_mask is None:
    return jnp.ones(input_ids.shape, bool)
  if attention_mask.shape != input_ids.shape:
    raise ValueError(
      f"attention_mask.shape={attention_mask.shape} must equal "
      f"input_ids.shape={input_ids.shape}"
    )
  return attention_mask.astype(bool)


class Encoder(nnx.Module):
  """What BERT, RoBERTa and ALBERT share: the pooler and the full forward.

  Subclasses define `embed` (the initial carry), `exit_layers` (the layers
  as `exit_stack` takes them) and the `pooler` Linear.
  """

  def pool(self, h: Float[Array, "B T D"]) -> Float[Array, "B D"]:
    """HF pooler: tanh(W · h[:, 0] + b) (shared by every step in PALBERT)."""
    return jnp.tanh(self.pooler(h[:, 0]))

  def __call__(
    self,
    input_ids: Int[Array, "B T"],
    token_type_ids: Int[Array, "B T"] | None = None,
    attention_mask: Int[Array, "B T"] | Bool[Array, "B T"] | None = None,
  ) -> tuple[Float[Array, "L1 B T D"], Float[Array, "B D"]]:
    """Full forward pass, HF `output_hidden_states=True` semantics.

    Returns:
      (hidden_states [L + 1, B, T, D] with the embedding output (after
       ALBERT's E → D projection) first, pooled [B, D] from the last layer).
    """
    carry = self.embed(input_ids, token_type_ids, attention_mask)
    hs = run_layers(self.exit_layers(), carry)
    return hs, self.pool(hs[-1])


class BertEncoder(Encoder):
  """BERT/RoBERTa encoder: embeddings, L stacked layers, a tanh pooler.

  Layer parameters are stacked on a leading L axis (`nnx.vmap`) so the
  execution modes index one layer's weights by a static or traced int.

  Args:
    cfg: sizes.
    rngs: parameter initialisation (weights are usually loaded with
      `jaxexit.models.hf_weights`).
  """

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d = cfg.hidden_size
    self.word_embeddings = make_embed(cfg, cfg.vocab_size, d, rngs)
    self.position_embeddings = make_embed(
      cfg, cfg.max_position_embeddings, d, rngs
    )
    self.token_type_embeddings = make_embed(cfg, cfg.type_vocab_size, d, rngs)
    self.embed_norm = make_layer_norm(cfg, d, rngs)

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make_layers(rngs):
      return TransformerLayer(cfg, rngs=rngs)

    self.layers = make_layers(rngs)
    self.pooler = make_linear(cfg, d, d, rngs)

  def position_ids(self, input_ids: Int[Array, "B T"]) -> Int[Array, "B T"]:
    """BERT: 0..T-1. RoBERTa: pad + cumulative count of non-pad tokens."""
    t = input_ids.shape[-1]
    if self.cfg.model_type == "bert":
      return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), input_ids.shape)
    pad = self.cfg.pad_token_id
    not_pad = (input_ids != pad).astype(jnp.int32)
    return jnp.cumsum(not_pad, axis=-1) * not_pad + pad

  def embed(
    self,
    input_ids: Int[Array, "B T"],
    token_type_ids: Int[Array, "B T"] | None = None,
    attention_mask: Int[Array, "B T"] | Bool[Array, "B T"] | None = None,
  ) -> dict:
    """The initial carry of the backbone.

    Args:
      input_ids: [B, T] token ids in [0, V) (checked when concrete).
      token_type_ids: [B, T] segment ids (zeros when None).
      attention_mask: [B, T], 1/True for real tokens (all ones when None,
        as in HF).

    Returns:
      `{"h": [B, T, D] embedding output, "mask": [B, T] bool}`.
    """
    checks.token_ids("input_ids", input_ids, self.cfg.vocab_size)
    positions = self.position_ids(input_ids)
    check_positions(positions, self.cfg.max_position_embeddings)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    h = (
      self.word_embeddings(input_ids)
      + self.position_embeddings(positions)
      + self.token_type_embeddings(token_type_ids)
    )
    return {
      "h": self.embed_norm(h),
      "mask": attention_mask_or_ones(input_ids, attention_mask),
    }

  def exit_layers(self) -> PerLayer:
    """The L stacked layers as `jaxexit.execution.exit_stack` takes them,
    called on `carry = {"h": [B, T, D], "mask": [B, T]}`."""
    return stacked(self.layers, apply_layer)


def mean_pool(
  h: Float[Array, "B T D"], mask: Bool[Array, "B T"], *, normalize: bool = True
) -> Float[Array, "B D"]:
  """sentence-transformers pooling: mean over real tokens, then L2-norm.

  Args:
    h: last hidden states.
    mask: True at real tokens.
    normalize: divide by the L2 norm (all-MiniLM-L6-v2's `Normalize` module).
  """
  m = mask.astype(jnp.float32)[..., None]  # [B, T, 1]
  pooled = (h.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
  if not normalize:
    return pooled
  norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
  return pooled / jnp.maximum(norm, 1e-12)
