"""Mamba-1 language model with masked scans, as a `DecoderBackbone`.

Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State
Spaces", recurrence (2a)/(2b) discretised with Ā = exp(ΔA) (zero-order
hold, eq. 4) and B̄ = ΔB (the first-order form `selective_scan_ref` uses).
Numerically identical to Hugging Face `MambaForCausalLM` in float32; the
layout is HF's `MambaBlock`: x + mixer(RMSNorm(x)).

Masking follows `jaxexit.models.ssm_lm`: Δ := 0 at an invalid step makes
(Ā, B̄x) = (1, 0), the identity of the scan, and the conv only sees valid
inputs, so invalid steps leave the state untouched wherever they sit.

Two paths compute one block: T == 1 runs the recurrent step (decode, O(1)
per token); T > 1 runs the parallel form, `lax.associative_scan` over
(exp(ΔA), ΔBx) pairs with memory O(B·T·E·S). `layer_sequential` (a
`lax.scan` of the step) is the reference both are tested against.

The embeddings, stacked blocks, final norm, head and `DecoderBackbone`
methods are `jaxexit.models.ssm_lm.MambaLMBase`, shared with Mamba-2
(`jaxexit.models.mamba2`).

Axes: B batch, T tokens, D width (HF `hidden_size`), V vocabulary, L layers,
S SSM state, E = expand·D inner width, C conv channels (E for Mamba-1),
R Δ rank (HF `time_step_rank`).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from jaxexit.models.ssm_lm import (
  CausalConv,
  MambaCache,
  MambaLMBase,
  ResidualBlock,
  check_hf_common,
  check_sizes,
  make_linear,
)
from jaxexit.typing import Array, Bool, Float


@dataclasses.dataclass(frozen=True, kw_only=True)
class MambaConfig:
  """Sizes of `MambaLM` (HF `MambaConfig` names in parentheses).

  Attributes:
    vocab_size: V.
    d_model: D (`hidden_size`).
    num_layers: L (`num_hidden_layers`).
    d_state: S (`state_size`).
    expand: E = expand · D (`intermediate_size`).
    d_conv: causal conv width (`conv_kernel`).
    dt_rank: R (`time_step_rank`); None means ceil(D / 16), HF's "auto".
    use_bias: biases in in_proj/out_proj.
    use_conv_bias: bias in the depthwise conv.
    layer_norm_eps: RMSNorm epsilon (`layer_norm_epsilon`).
    tie_embeddings: lm_head = embeddings (`tie_word_embeddings`).
    residual_in_fp32: keep the residual stream in float32.
    dt_min, dt_max, dt_init_floor: Δ initialisation range (training from
      scratch only; HF `time_step_min/max/floor`).
    dtype: compute dtype of the projections; scans are always float32.
    param_dtype: parameter dtype.
  """

  vocab_size: int = 50280
  d_model: int = 768
  num_layers: int = 24
  d_state: int = 16
  expand: int = 2
  d_conv: int = 4
  dt_rank: int | None = None
  use_bias: bool = False
  use_conv_bias: bool = True
  layer_norm_eps: float = 1e-5
  tie_embeddings: bool = True
  residual_in_fp32: bool = True
  dt_min: float = 1e-3
  dt_max: float = 0.1
  dt_init_floor: float = 1e-4
  dtype: DTypeLike = jnp.float32
  param_dtype: DTypeLike = jnp.float32

  def __post_init__(self):
    if self.dt_rank is None:
      object.__setattr__(self, "dt_rank", math.ceil(self.d_model / 16))
    check_sizes(
      self,
      (
        "vocab_size",
        "d_model",
        "num_layers",
        "d_state",
        "expand",
        "d_conv",
        "dt_rank",
      ),
    )
    if not 0 < self.dt_min <= self.dt_max:
      raise ValueError(
        "MambaConfig needs 0 < dt_min <= dt_max; got "
        f"dt_min={self.dt_min}, dt_max={self.dt_max}"
      )

  @property
  def d_inner(self) -> int:
    return self.expand * self.d_model

  @classmethod
  def from_hf(cls, hf: dict, **overrides) -> "MambaConfig":
    """Reads a Hugging Face Mamba `config.json` dict.

    Args:
      hf: the parsed `config.json` (model_type "mamba").
      **overrides: fields to set instead (`dtype`, ...).
    """
    check_hf_common(hf, "mamba")
    rank = hf.get("time_step_rank", "auto")
    kw = dict(
      vocab_size=hf["vocab_size"],
      d_model=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"],
      d_state=hf.get("state_size", 16),
      expand=hf.get("expand", 2),
      d_conv=hf.get("conv_kernel", 4),
      dt_rank=None if rank == "auto" else rank,
      use_bias=hf.get("use_bias", False),
      use_conv_bias=hf.get("use_conv_bias", True),
      layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
      tie_embeddings=hf.get("tie_word_embeddings", True),
      residual_in_fp32=hf.get("residual_in_fp32", True),
    )
    kw.update(overrides)
    return cls(**kw)


MAMBA_CONFIGS: dict[str, MambaConfig] = {
  # state-spaces/mamba-130m-hf.
  "mamba-130m": MambaConfig(
    vocab_size=50280,
    d_model=768,
    num_layers=24,
    d_state=16,
    expand=2,
    d_conv=4,
    dt_rank=48,
  ),
  "tiny": MambaConfig(
    vocab_size=64,
    d_model=32,
    num_layers=2,
    d_state=8,
    expand=2,
    d_conv=4,
    dt_rank=4,
  ),
}


def selective_scan(
  x: Array, dt: Array, a: Array, b: Array, c: Array, h0: Array
) -> tuple[Array, Array]:
  """Parallel selective scan h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t.

  Args:
    x: [B, T, E]; dt: [B, T, E] (0 at invalid steps); a: [E, S] (= A < 0);
      b, c: [B, T, S]; h0: [B, E, S] state before the first step.

  Returns:
    (y_t = C_t · h_t [B, T, E], state after the last step [B, E, S]).
  """
  decay = jnp.exp(dt[..., None] * a[None, None])  # [B, T, E, S]
  inp = (dt * x)[..., None] * b[:, :, None, :]  # [B, T, E, S]

  def combine(left, right):
    return left[0] * right[0], right[0] * left[1] + right[1]

  decay, inp = jax.lax.associative_scan(combine, (decay, inp), axis=1)
  h = decay * h0[:, None] + inp  # [B, T, E, S]
  return jnp.einsum("BTES,BTS->BTE", h, c), h[:, -1]


def selective_step(
  x: Array, dt: Array, a: Array, b: Array, c: Array, h: Array, valid: Array
) -> tuple[Array, Array]:
  """One recurrent step; x, dt [B, E], a [E, S], b, c [B, S], h [B, E, S],
  valid [B] -> (y [B, E], new h, unchanged where not valid)."""
  new = jnp.exp(dt[..., None] * a[None]) * h + (dt * x)[..., None] * b[:, None]
  new = jnp.where(valid[:, None, None], new, h)
  return jnp.einsum("BES,BS->BE", new, c), new


def _symmetric_uniform(bound: float):
  def init(key, shape, dtype):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _dt_bias_init(cfg):
  """Inverse softplus of Δ ~ log-uniform[dt_min, dt_max] (Mamba's init)."""

  def init(key, shape, dtype):
    lo, hi = math.log(cfg.dt_min), math.log(cfg.dt_max)
    dt = jnp.exp(jax.random.uniform(key, shape) * (hi - lo) + lo)
    dt = jnp.maximum(dt, cfg.dt_init_floor)
    return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)

  return init


class MambaMixer(nnx.Module):
  """HF `MambaMixer`: in_proj → (x, z); SiLU(conv x); x_proj → (Δ, B, C);
  selective scan with D skip; y · SiLU(z); out_proj.

  Args:
    cfg: sizes.
    rngs: initialisation (Mamba's S4D-real A, D = 1, Δ bias init).
  """

  def __init__(self, cfg: MambaConfig, *, rngs: nnx.Rngs):
    e, s, r = cfg.d_inner, cfg.d_state, cfg.dt_rank
    self.in_proj = make_linear(
      cfg, cfg.d_model, 2 * e, rngs, use_bias=cfg.use_bias
    )
    self.conv1d = CausalConv(
      e,
      cfg.d_conv,
      use_bias=cfg.use_conv_bias,
      param_dtype=cfg.param_dtype,
      rngs=rngs,
    )
    self.x_proj = make_linear(cfg, e, r + 2 * s, rngs, use_bias=False)
    self.dt_proj = make_linear(
      cfg,
      r,
      e,
      rngs,
      use_bias=True,
      kernel_init=_symmetric_uniform(r**-0.5),
      bias_init=_dt_bias_init(cfg),
    )
    a = jnp.broadcast_to(jnp.arange(1, s + 1, dtype=jnp.float32)[None], (e, s))
    self.A_log = nnx.Param(jnp.log(a).astype(cfg.param_dtype))
    self.D = nnx.Param(jnp.ones((e,), cfg.param_dtype))
    self.out_proj = make_linear(
      cfg, e, cfg.d_model, rngs, use_bias=cfg.use_bias
    )
    self.dt_rank, self.d_state, self.dtype = r, s, cfg.dtype

  def __call__(
    self, x: Float[Array, "B T D"], cache: MambaCache, valid: Bool[Array, "B T"]
  ) -> tuple[Float[Array, "B T D"], MambaCache]:
    """Mixer output and updated cache (step path when T == 1)."""
    xs, z = jnp.split(self.in_proj(x), 2, axis=-1)  # [B, T, E] each
    xs, conv = self.conv1d(xs, cache.conv, valid)  # float32
    r, s = self.dt_rank, self.d_state
    proj = self.x_proj(xs.astype(self.dtype)).astype(jnp.float32)
    dt, b, c = jnp.split(proj, [r, r + s], axis=-1)
    dt = jax.nn.softplus(
      self.dt_proj(dt.astype(self.dtype)).astype(jnp.float32)
    )  # [B, T, E]
    dt = jnp.where(valid[..., None], dt, 0.0)
    a = -jnp.exp(self.A_log[...].astype(jnp.float32))
    if x.shape[1] == 1:
      y, ssm = selective_step(
        xs[:, 0], dt[:, 0], a, b[:, 0], c[:, 0], cache.ssm, valid[:, 0]
      )
      y = y[:, None]
    else:
      y, ssm = selective_scan(xs, dt, a, b, c, cache.ssm)
    y = y + self.D[...].astype(jnp.float32)[None, None] * xs
    y = y * jax.nn.silu(z.astype(jnp.float32))
    return self.out_proj(y.astype(self.dtype)), MambaCache(conv, ssm)


class MambaLM(MambaLMBase):
  """Mamba-1 LM (HF `MambaForCausalLM`); see `MambaLMBase`.

  Args:
    cfg: a `MambaConfig`.
    rngs: parameter initialisation.
  """

  config_cls = MambaConfig

  @staticmethod
  def make_block(cfg: MambaConfig, rngs: nnx.Rngs) -> ResidualBlock:
    return ResidualBlock(cfg, MambaMixer(cfg, rngs=rngs), rngs=rngs)

  def cache_shapes(self, batch: int) -> MambaCache:
    """conv [B, E, d_conv - 1], ssm [B, E, S]."""
    e = self.cfg.d_inner
    return MambaCache(
      conv=(batch, e, self.cfg.d_conv - 1), ssm=(batch, e, self.cfg.d_state)
    )
