# Over 400 lines: one model family's config, blocks, caches and backbone API
# (attention and RoPE already live in llama_attention.py).
"""Llama / Mistral / Qwen2 decoder LM as a `DecoderBackbone` with explicit
KV caches.

Touvron et al. 2023 (Llama 2), Jiang et al. 2023 (Mistral 7B), SmolLM2, Qwen2
(Yang et al. 2024; e.g. DeepSeek-R1-Distill-Qwen-1.5B): a pre-norm decoder
with RMSNorm, rotary position embeddings (Su et al. 2021, in Hugging Face's
`rotate_half` layout: the two halves of a head, not interleaved pairs),
grouped-query attention (Ainslie et al. 2023), a SwiGLU MLP (Shazeer 2020),
optional biases on the q/k/v projections (Qwen2), optional sliding-window
attention (Mistral) and optional tied input/output embeddings (SmolLM2).
Qwen2 is the same network plus those three biases, so it is a config of this
model (`qkv_bias`), not a separate one. In float32 the logits and every
hidden state match HF `LlamaForCausalLM` / `MistralForCausalLM` /
`Qwen2ForCausalLM` within 1e-5 (tests).

The model implements `jaxexit.decoding.backbone.DecoderBackbone`: each block
is a separate module called by a static index, with one `KVCache` of S slots
per block. RoPE, the cache and the attention itself are the pure functions
of `jaxexit.models.llama_attention`: slot s holds the key/value of absolute
position s; a query at position p attends to the slots s ≤ p whose `valid`
flag is set (and p - s < sliding_window for Mistral), so positions need not
be contiguous and `freeze` hides a position by clearing its flag.

Axes: B batch, T tokens, S cache slots (`max_len`), D width (HF
`hidden_size`), H query heads, Hkv key/value heads, G = H / Hkv query heads
per KV head, K head dim, F MLP width (HF `intermediate_size`), V vocabulary,
L layers.
"""

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike

from jaxexit import checks
from jaxexit.models.llama_attention import (
  KVCache,
  Llama3RopeScaling,
  apply_rope,
  attend,
  attention_mask,
  clear_kv,
  rope_inv_freq,
  write_kv,
)
from jaxexit.nn.remat import remat_call
from jaxexit.typing import Array, Bool, Float, Int, PyTree

MODEL_TYPES = ("llama", "mistral", "qwen2")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LlamaConfig:
  """Sizes of `LlamaLM` (HF `LlamaConfig`/`MistralConfig`/`Qwen2Config`
  names in parentheses where they differ).

  `num_kv_heads` and `head_dim` are filled in at construction, so a
  `dataclasses.replace` that changes `num_heads` or `d_model` must pass
  them again (or None).

  Attributes:
    vocab_size: V.
    d_model: D (`hidden_size`).
    num_layers: L (`num_hidden_layers`).
    num_heads: H (`num_attention_heads`).
    num_kv_heads: Hkv (`num_key_value_heads`); None means H (no GQA).
    head_dim: K; None means D // H.
    mlp_hidden: F (`intermediate_size`).
    rms_norm_eps: RMSNorm epsilon.
    rope_theta: RoPE base wavelength.
    rope_scaling: Llama 3.1 frequency scaling, or None (plain RoPE).
    tie_embeddings: the LM head reuses the embedding table
      (`tie_word_embeddings`).
    qkv_bias: the q/k/v projections have biases (Qwen2; implied by its
      model_type); o_proj and the MLP never do.
    sliding_window: Mistral's attention window W (a query at p sees keys at
      p - W < s ≤ p), or None for full causal attention.
    max_position: longest sequence (`max_position_embeddings`); RoPE itself
      has no table, `__call__` refuses longer inputs.
    dtype: compute dtype; softmax and logits are always float32.
    param_dtype: parameter dtype.
  """

  vocab_size: int = 32000
  d_model: int = 4096
  num_layers: int = 32
  num_heads: int = 32
  num_kv_heads: int | None = None
  head_dim: int | None = None
  mlp_hidden: int = 11008
  rms_norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  rope_scaling: Llama3RopeScaling | None = None
  tie_embeddings: bool = False
  qkv_bias: bool = False
  sliding_window: int | None = None
  max_position: int = 4096
  dtype: DTypeLike = jnp.float32
  param_dtype: DTypeLike = jnp.float32

  def __post_init__(self):
    for name in (
      "vocab_size",
      "d_model",
      "num_layers",
      "num_heads",
      "mlp_hidden",
      "max_position",
    ):
      checks.positive_int(f"LlamaConfig.{name}", getattr(self, name))
    if self.num_kv_heads is None:
      object.__setattr__(self, "num_kv_heads", self.num_heads)
    checks.positive_int("LlamaConfig.num_kv_heads", self.num_kv_heads)
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
        f"LlamaConfig.num_heads={self.num_heads} must be divisible by "
        f"num_kv_heads={self.num_kv_heads}"
      )
    if self.head_dim is None:
      if self.d_model % self.num_heads:
        raise ValueError(
          f"LlamaConfig.d_model={self.d_model} must be divisible by "
          f"num_heads={self.num_heads} when head_dim is None"
        )
      object.__setattr__(self, "head_dim", self.d_model // self.num_heads)
    checks.positive_int("LlamaConfig.head_dim", self.head_dim)
    if self.head_dim % 2:
      raise ValueError(
        "LlamaConfig.head_dim must be even (RoPE rotates "
        f"half-dimensions); got head_dim={self.head_dim}"
      )
    if self.sliding_window is not None:
      checks.positive_int("LlamaConfig.sliding_window", self.sliding_window)
    for name in ("rms_norm_eps", "rope_theta"):
      checks.in_range(
        f"LlamaConfig.{name}",
        getattr(self, name),
        0,
        math.inf,
        low_open=True,
        high_open=True,
      )
    if not isinstance(self.rope_scaling, (Llama3RopeScaling, type(None))):
      raise ValueError(
        "LlamaConfig.rope_scaling must be a Llama3RopeScaling "
        f"or None; got {self.rope_scaling!r}"
      )

  @classmethod
  def from_hf(cls, hf: dict, **overrides) -> "LlamaConfig":
    """Reads a Hugging Face `config.json` dict of a Llama, Mistral or
    Qwen2 model.

    Accepts both the transformers 5 `rope_parameters` dict and the older
    top-level `rope_theta` + `rope_scaling`. Qwen2 always has q/k/v biases
    (HF ignores `attention_bias` / `mlp_bias` there, and so does this) and
    a sliding window only where `use_sliding_window` is set, on the layers
    whose `layer_types` entry is "sliding_attention" (by default those
    numbered ≥ `max_window_layers`); a window on all layers or on none maps
    exactly, a mix is refused.

    Args:
      hf: the parsed `config.json`.
      **overrides: fields to set instead (`dtype`, ...).

    Raises:
      ValueError: for another model_type, activation, biases (Llama /
        Mistral), partial rotary embeddings, a RoPE type other than
        default / llama3, or (Qwen2) M-RoPE or a sliding window on only
        some layers.
    """
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
      raise ValueError(
        f"config.json model_type={model_type!r} is not one of "
        f"{list(MODEL_TYPES)}"
      )
    if hf.get("hidden_act", "silu") != "silu":
      raise ValueError(
        f"hidden_act={hf['hidden_act']!r} unsupported; only 'silu' (SwiGLU)"
      )
    qwen2 = model_type == "qwen2"
    bias_keys = () if qwen2 else ("attention_bias", "mlp_bias")
    for key in bias_keys:
      if hf.get(key):
        raise ValueError(
          f"{key}={hf[key]!r} unsupported; only bias-free projections"
        )
    if qwen2 and hf.get("use_mrope"):
      raise ValueError(
        f"use_mrope={hf['use_mrope']!r} unsupported; only 1-D RoPE"
      )
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
      raise ValueError(
        f"partial_rotary_factor={rope['partial_rotary_factor']!r} unsupported"
      )
    kw = dict(
      vocab_size=hf["vocab_size"],
      d_model=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"],
      num_kv_heads=hf.get("num_key_value_heads"),
      head_dim=hf.get("head_dim"),
      mlp_hidden=hf["intermediate_size"],
      rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
      rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 1e4))),
      rope_scaling=_rope_scaling_from_hf(rope),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      qkv_bias=qwen2,
      sliding_window=(
        _qwen2_sliding_window(hf) if qwen2 else hf.get("sliding_window")
      ),
      max_position=hf.get("max_position_embeddings", 2048),
    )
    kw.update(overrides)
    return cls(**kw)


def _qwen2_sliding_window(hf: dict) -> int | None:
  """The window of HF `Qwen2Config` if every layer uses it, None if none
  does (`use_sliding_window` false, the R1-Distill case, or every layer
  below `max_window_layers`); refuses a mix, which one window cannot
  express."""
  window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
  if window is None:
    return None
  n = hf["num_hidden_layers"]
  first = hf.get("max_window_layers", 28)  # HF Qwen2Config's default
  types = hf.get("layer_types") or [
    "sliding_attention" if i >= first else "full_attention" for i in range(n)
  ]
  unknown = set(types) - {"sliding_attention", "full_attention"}
  if unknown:
    raise ValueError(f"layer_types {sorted(unknown)} unsupported")
  sliding = [t == "sliding_attention" for t in types]
  if all(sliding):
    return window
  if not any(sliding):
    return None
  raise ValueError(
    f"use_sliding_window=True with sliding_window={window}, "
    f"max_window_layers={first}, "
    f"num_hidden_layers={n} puts the window on layers "
    f"{[i for i, s in enumerate(sliding) if s]} only (layer_types="
    f"{hf.get('layer_types')}); LlamaConfig.sliding_window applies to "
    "every layer, so only a window on all layers or on none is supported"
  )


def _rope_scaling_from_hf(rope: dict) -> Llama3RopeScaling | None:
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type == "default":
    return None
  if rope_type != "llama3":
    raise ValueError(
      f"rope_type={rope_type!r} unsupported; expected 'default' or 'llama3'"
    )
  return Llama3RopeScaling(
    factor=float(rope["factor"]),
    low_freq_factor=float(rope["low_freq_factor"]),
    high_freq_factor=float(rope["high_freq_factor"]),
    original_max_position=rope["original_max_position_embeddings"],
  )


def _linear(
  cfg: LlamaConfig,
  d_in: int,
  d_out: int,
  rngs: nnx.Rngs,
  use_bias: bool = False,
) -> nnx.Linear:
  return nnx.Linear(
    d_in,
    d_out,
    use_bias=use_bias,
    dtype=cfg.dtype,
    param_dtype=cfg.param_dtype,
    kernel_init=nnx.initializers.normal(0.02),
    rngs=rngs,
  )


def _rms_norm(cfg: LlamaConfig, rngs: nnx.Rngs) -> nnx.RMSNorm:
  return nnx.RMSNorm(
    cfg.d_model,
    epsilon=cfg.rms_norm_eps,
    dtype=cfg.dtype,
    param_dtype=cfg.param_dtype,
    rngs=rngs,
  )


class LlamaAttention(nnx.Module):
  """The q/k/v/o projections of one block (HF `LlamaAttention`): q/k/v
  with biases when `cfg.qkv_bias` (HF `Qwen2Attention`), o never."""

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    d, k, bias = cfg.d_model, cfg.head_dim, cfg.qkv_bias
    self.q_proj = _linear(cfg, d, cfg.num_heads * k, rngs, bias)
    self.k_proj = _linear(cfg, d, cfg.num_kv_heads * k, rngs, bias)
    self.v_proj = _linear(cfg, d, cfg.num_kv_heads * k, rngs, bias)
    self.o_proj = _linear(cfg, cfg.num_heads * k, d, rngs)
    self.head_dim = k

  def kv(
    self,
    x: Float[Array, "B T D"],
    positions: Int[Array, "B T"],
    inv_freq: np.ndarray,
  ) -> tuple[Float[Array, "B T Hkv K"], Float[Array, "B T Hkv K"]]:
    """Keys (after RoPE) and values of the normed input `x`."""
    b, t, _ = x.shape
    k = self.k_proj(x).reshape(b, t, -1, self.head_dim)  # [B, T, Hkv, K]
    v = self.v_proj(x).reshape(b, t, -1, self.head_dim)  # [B, T, Hkv, K]
    return apply_rope(k, positions, inv_freq), v

  def query(
    self,
    x: Float[Array, "B T D"],
    positions: Int[Array, "B T"],
    inv_freq: np.ndarray,
  ) -> Float[Array, "B T H K"]:
    b, t, _ = x.shape
    q = self.q_proj(x).reshape(b, t, -1, self.head_dim)  # [B, T, H, K]
    return apply_rope(q, positions, inv_freq)


class LlamaMLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) · up(x))."""

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    self.gate_proj = _linear(cfg, cfg.d_model, cfg.mlp_hidden, rngs)
    self.up_proj = _linear(cfg, cfg.d_model, cfg.mlp_hidden, rngs)
    self.down_proj = _linear(cfg, cfg.mlp_hidden, cfg.d_model, rngs)

  def __call__(self, x: Float[Array, "B T D"]) -> Float[Array, "B T D"]:
    return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nnx.Module):
  """Pre-norm block: h += attn(norm(h)); h += mlp(norm(h)).

  Attribute names follow HF's `model.layers.{i}.*` tensor names.
  """

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    self.input_layernorm = _rms_norm(cfg, rngs)
    self.self_attn = LlamaAttention(cfg, rngs=rngs)
    self.post_attention_layernorm = _rms_norm(cfg, rngs)
    self.mlp = LlamaMLP(cfg, rngs=rngs)


def block_forward(
  block: LlamaBlock,
  h: Float[Array, "B T D"],
  positions: Int[Array, "B T"],
  inv_freq: np.ndarray,
  attention: Callable[[Array, Array, Array], Array],
) -> Float[Array, "B T D"]:
  """One pre-norm block with a pluggable attention.

  Args:
    block: the block's parameters.
    h: [B, T, D] residual stream.
    positions: [B, T] RoPE position ids.
    inv_freq: RoPE inverse frequencies (`rope_inv_freq`).
    attention: `(q [B, T, H, K], k [B, T, Hkv, K], v [B, T, Hkv, K]) ->
      [B, T, H, K]`, keys and queries after RoPE (the KV cache of
      `LlamaLM.layer`, or the position-id attention of token pruning).

  Returns:
    [B, T, D] the block's output.
  """
  x = block.input_layernorm(h)
  k, v = block.self_attn.kv(x, positions, inv_freq)
  q = block.self_attn.query(x, positions, inv_freq)
  attn = attention(q, k, v)
  b, t, _ = h.shape
  h = h + block.self_attn.o_proj(attn.reshape(b, t, -1))
  return h + block.mlp(block.post_attention_layernorm(h))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LlamaOutput:
  """`LlamaLM.__call__` output.

  Attributes:
    logits: [B, T, V] float32.
    hidden_states: L + 1 arrays [B, T, D], HF `output_hidden_states`
      convention (transformers 5 `capture_outputs` ties the last entry to
      `last_hidden_state`): the embeddings, the outputs of blocks
      0 .. L - 2, and last the output of block L - 1 AFTER the final norm.
  """

  logits: PyTree
  hidden_states: PyTree


class LlamaLM(nnx.Module):
  """Llama / Mistral / Qwen2 causal LM implementing `DecoderBackbone`.

  Every method is pure: caches go in and come out, NNX state is never
  mutated, so the decoding engine may call `layer(i, ...)` (static `i`)
  inside `lax.switch` / `lax.while_loop`.

  Args:
    cfg: sizes.
    rngs: parameter initialisation (weights are usually loaded with
      `jaxexit.models.llama_weights`).
  """

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.num_layers = cfg.num_layers
    self.d_model = cfg.d_model
    self.vocab_size = cfg.vocab_size
    self.max_position = cfg.max_position
    self.embed_tokens = nnx.Embed(
      cfg.vocab_size,
      cfg.d_model,
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      embedding_init=nnx.initializers.normal(0.02),
      rngs=rngs,
    )
    self.layers = nnx.List(
      [LlamaBlock(cfg, rngs=rngs) for _ in range(cfg.num_layers)]
    )
    self.norm = _rms_norm(cfg, rngs)
    # Tied: `lm_head` reads `embed_tokens.embedding` (no shared module).
    self.unembed = (
      None
      if cfg.tie_embeddings
      else _linear(cfg, cfg.d_model, cfg.vocab_size, rngs)
    )

  def _inv_freq(self) -> np.ndarray:
    cfg = self.cfg
    return rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)

  def embed(self, tokens: Int[Array, "B T"]) -> Float[Array, "B T D"]:
    """Token embeddings (the residual stream entering block 0)."""
    return self.embed_tokens(tokens)

  def init_cache(self, batch: int, max_len: int) -> tuple[KVCache, ...]:
    """L empty caches of `max_len` slots (zeros, every flag False)."""
    checks.positive_int("batch", batch)
    checks.positive_int("max_len", max_len)
    shape = (batch, max_len, self.cfg.num_kv_heads, self.cfg.head_dim)
    empty = KVCache(
      k=jnp.zeros(shape, self.cfg.dtype),
      v=jnp.zeros(shape, self.cfg.dtype),
      valid=jnp.zeros((batch, max_len), bool),
    )
    return (empty,) * self.num_layers

  def layer(
    self,
    i: int,
    h: Float[Array, "B T D"],
    cache: KVCache,
    positions: Int[Array, "B T"],
    valid: Bool[Array, "B T"],
  ) -> tuple[Float[Array, "B T D"], KVCache]:
    """Block `i` (static): writes its K/V at valid `positions`, then every
    query attends over the whole cache (see module docstring).

    Returns:
      (h_out [B, T, D], updated cache); rows with `valid` False are
      garbage and leave the cache untouched.
    """

    def cached(q, k, v):
      nonlocal cache
      cache = write_kv(cache, k, v, positions, valid)
      mask = attention_mask(positions, cache.valid, self.cfg.sliding_window)
      return attend(q, cache, mask)

    h = block_forward(self.layers[i], h, positions, self._inv_freq(), cached)
    return h, cache

  def propagate(
    self,
    i: int,
    h: Float[Array, "B T D"],
    cache: KVCache,
    positions: Int[Array, "B T"],
    valid: Bool[Array, "B T"],
  ) -> KVCache:
    """Writes block `i`'s K/V computed from `h` (input norm, K/V
    projections and RoPE only: no attention, no MLP)."""
    block = self.layers[i]
    x = block.input_layernorm(h)
    k, v = block.self_attn.kv(x, positions, self._inv_freq())
    return write_kv(cache, k, v, positions, valid)

  def freeze(
    self,
    i: int,
    cache: KVCache,
    positions: Int[Array, "B T"],
    valid: Bool[Array, "B T"],
  ) -> KVCache:
    """Clears the flags at valid `positions` so later queries skip those
    keys (`i` is unused: the cache is already block `i`'s)."""
    del i
    return clear_kv(cache, positions, valid)

  def final_norm(self, h: Float[Array, "B T D"]) -> Float[Array, "B T D"]:
    """The RMSNorm before the LM head."""
    return self.norm(h)

  def lm_head(self, h: Float[Array, "B T D"]) -> Float[Array, "B T V"]:
    """float32 logits from the (tied or untied) output projection."""
    h = h.astype(self.cfg.dtype)
    if self.unembed is None:
      table = self.embed_tokens.embedding[...].astype(self.cfg.dtype)
      return jnp.einsum(
        "BTD,VD->BTV", h, table, preferred_element_type=jnp.float32
      )
    kernel = self.unembed.kernel[...].astype(self.cfg.dtype)
    return jnp.einsum(
      "BTD,DV->BTV", h, kernel, preferred_element_type=jnp.float32
    )

  def __call__(
    self, tokens: Int[Array, "B T"], valid: Bool[Array, "B T"] | None = None
  ) -> LlamaOutput:
    """Prefill of `tokens` at positions 0..T-1 on a fresh cache of T slots.

    Args:
      tokens: [B, T] token ids in [0, V) (checked when concrete).
      valid: [B, T], False at padding (all True when None); padded rows
        produce garbage and are invisible to the other rows.
    """
    checks.token_ids("tokens", tokens, self.vocab_size)
    if valid is not None:
      checks.same_shape(("tokens", "valid"), tokens, valid)
    return self.forward_embeddings(self.embed(tokens), valid)

  def forward_embeddings(
    self, h: Float[Array, "B T D"], valid: Bool[Array, "B T"] | None = None
  ) -> LlamaOutput:
    """`__call__` from input embeddings instead of token ids (e.g. LLaVA's
    text embeddings with image embeddings merged in); `hidden_states[0]` is
    `h`.

    Args:
      h: [B, T, D] input embeddings (the residual stream entering block 0).
      valid: [B, T], as in `__call__`.
    """
    b, t, _ = h.shape
    if valid is not None and valid.shape != (b, t):
      raise ValueError(
        f"valid.shape={valid.shape} must be h.shape[:2]={(b, t)}"
      )
    if t > self.cfg.max_position:
      raise ValueError(
        f"input of T={t} tokens is longer than "
        f"LlamaConfig.max_position={self.cfg.max_position}"
      )
    if valid is None:
      valid = jnp.ones((b, t), bool)
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    caches = self.init_cache(b, t)
    hidden = [h]
    for i in range(self.num_layers):
      layer = functools.partial(self.layer, i)
      h, _ = remat_call(layer, h, caches[i], positions, valid)
      hidden.append(h)
    hidden[-1] = self.final_norm(h)
    return LlamaOutput(
      logits=self.lm_head(hidden[-1]), hidden_states=tuple(hidden)
    )
