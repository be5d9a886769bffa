# Over 400 lines: 338 before ruff format; one model's block and scan.
"""Mamba-2 language model (Codestral Mamba) with masked scans.

Dao & Gu 2024, "Transformers are SSMs" (SSD): per head a scalar decay,
h_t = exp(Δ_t a) h_{t-1} + Δ_t x_t ⊗ B_t, y_t = h_t C_t + D x_t (§3 and the
`ssd_minimal` listing), with B/C shared by the heads of a group, the gated
RMSNorm RMSNorm(y · SiLU(z)) over E / G channel groups before out_proj, and
one in_proj whose output splits, in HF order, into z [E], xBC [E + 2GS]
and Δ [H]. Numerically identical to Hugging Face `Mamba2ForCausalLM` (its
torch path) in float32, including the `time_step_limit` clamp of Δ. HF
clamps in its chunked (prefill) path only, so with non-default limits its
own decode drifts from its prefill; here both paths clamp, matching HF's
prefill (and HF everywhere for the default limits (0, inf)).

Masking follows `jaxexit.models.ssm_lm`: Δ := 0 at invalid steps gives
decay exp(0) = 1 and input 0, so a masked step adds 0 to the log-decay
cumsum, and the conv over the xBC channels only sees valid inputs.
T == 1 runs the recurrent step; T > 1 runs the chunked SSD form with chunk
Q = min(chunk_size, T) (zero-padded to whole chunks: padding is a masked
step), which carries the cached state in and the final state out. Chunked
SSD rather than an associative scan because the latter materialises the
[B, T, H, K, S] states (1 Mi floats per token for Codestral).

Axes: B batch, T tokens, D width, V vocabulary, L layers, H heads, K head
dim (P in the paper), S SSM state, E = H·K inner width, G groups (B/C
sharing), R = H / G heads per group, C conv channels (E + 2GS); inside the
SSD, Z chunk index, Q and M positions within a chunk, Y target chunk.
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

# The SSD contractions are small next to in_proj/out_proj; HIGHEST keeps them
# in true float32 on GPUs, where DEFAULT means TF32 and would put prefill and
# the (elementwise) decode step ~1e-3 apart.
SCAN_PRECISION = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True, kw_only=True)
class Mamba2Config:
  """Sizes of `Mamba2LM` (HF `Mamba2Config` names in parentheses).

  Attributes:
    vocab_size: V.
    d_model: D (`hidden_size`).
    num_layers: L (`num_hidden_layers`).
    d_state: S (`state_size`).
    expand: E = expand · D; must equal num_heads · head_dim.
    num_heads: H.
    head_dim: K.
    n_groups: G, groups sharing B and C (and the gated-norm groups).
    d_conv: causal conv width (`conv_kernel`).
    chunk_size: SSD chunk length of the parallel form.
    use_bias: biases in in_proj/out_proj.
    use_conv_bias: bias in the depthwise conv.
    layer_norm_eps: epsilon of both RMSNorms (`layer_norm_epsilon`).
    dt_limit: (min, max) clamp of Δ after softplus (`time_step_limit`).
    tie_embeddings: lm_head = embeddings (`tie_word_embeddings`).
    residual_in_fp32: keep the residual stream in float32.
    dt_min, dt_max, dt_init_floor: Δ bias initialisation range.
    dtype: compute dtype of the projections; scans are always float32.
    param_dtype: parameter dtype.
  """

  vocab_size: int = 32768
  d_model: int = 4096
  num_layers: int = 64
  d_state: int = 128
  expand: int = 2
  num_heads: int = 128
  head_dim: int = 64
  n_groups: int = 8
  d_conv: int = 4
  chunk_size: int = 256
  use_bias: bool = False
  use_conv_bias: bool = True
  layer_norm_eps: float = 1e-5
  dt_limit: tuple[float, float] = (0.0, math.inf)
  tie_embeddings: bool = False
  residual_in_fp32: bool = True
  dt_min: float = 1e-3
  dt_max: float = 0.1
  dt_init_floor: float = 1e-4
  dtype: DTypeLike = jnp.float32
  param_dtype: DTypeLike = jnp.float32

  def __post_init__(self):
    check_sizes(
      self,
      (
        "vocab_size",
        "d_model",
        "num_layers",
        "d_state",
        "expand",
        "num_heads",
        "head_dim",
        "n_groups",
        "d_conv",
        "chunk_size",
      ),
    )
    if self.d_inner != self.num_heads * self.head_dim:
      raise ValueError(
        f"Mamba2Config: expand * d_model = {self.d_inner} must equal "
        f"num_heads * head_dim = {self.num_heads} * {self.head_dim}"
      )
    if self.num_heads % self.n_groups:
      raise ValueError(
        f"Mamba2Config.num_heads={self.num_heads} must be "
        f"divisible by n_groups={self.n_groups}"
      )
    lo, hi = self.dt_limit
    if not 0 <= lo <= hi:
      raise ValueError(
        f"Mamba2Config.dt_limit={self.dt_limit} must satisfy 0 <= min <= max"
      )
    if not 0 < self.dt_min <= self.dt_max:
      raise ValueError(
        "Mamba2Config needs 0 < dt_min <= dt_max; got "
        f"dt_min={self.dt_min}, dt_max={self.dt_max}"
      )

  @property
  def d_inner(self) -> int:
    return self.expand * self.d_model

  @property
  def conv_dim(self) -> int:
    return self.d_inner + 2 * self.n_groups * self.d_state

  @classmethod
  def from_hf(cls, hf: dict, **overrides) -> "Mamba2Config":
    """Reads a Hugging Face Mamba-2 `config.json` dict.

    Args:
      hf: the parsed `config.json` (model_type "mamba2").
      **overrides: fields to set instead (`dtype`, ...).
    """
    check_hf_common(hf, "mamba2")
    if hf.get("norm_before_gate", False) or not hf.get("rms_norm", True):
      raise ValueError(
        "only the gated RMSNorm with norm_before_gate=False is "
        f"supported; got rms_norm={hf.get('rms_norm')!r}, "
        f"norm_before_gate={hf.get('norm_before_gate')!r}"
      )
    kw = dict(
      vocab_size=hf["vocab_size"],
      d_model=hf["hidden_size"],
      num_layers=hf["num_hidden_layers"],
      d_state=hf.get("state_size", 128),
      expand=hf.get("expand", 2),
      num_heads=hf.get("num_heads", 128),
      head_dim=hf.get("head_dim", 64),
      n_groups=hf.get("n_groups", 8),
      d_conv=hf.get("conv_kernel", 4),
      chunk_size=hf.get("chunk_size", 256),
      use_bias=hf.get("use_bias", False),
      use_conv_bias=hf.get("use_conv_bias", True),
      layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
      dt_limit=tuple(
        float(v) for v in hf.get("time_step_limit", (0.0, math.inf))
      ),
      tie_embeddings=hf.get("tie_word_embeddings", False),
      residual_in_fp32=hf.get("residual_in_fp32", True),
    )
    kw.update(overrides)
    return cls(**kw)


MAMBA2_CONFIGS: dict[str, Mamba2Config] = {
  # mistralai/Mamba-Codestral-7B-v0.1: E = 8192 = 128 heads x 64.
  "codestral-mamba-7b": Mamba2Config(
    vocab_size=32768,
    d_model=4096,
    num_layers=64,
    d_state=128,
    expand=2,
    num_heads=128,
    head_dim=64,
    n_groups=8,
    d_conv=4,
    chunk_size=256,
    layer_norm_eps=1e-5,
    tie_embeddings=False,
  ),
  "tiny": Mamba2Config(
    vocab_size=64,
    d_model=32,
    num_layers=2,
    d_state=8,
    expand=2,
    num_heads=8,
    head_dim=8,
    n_groups=2,
    d_conv=4,
    chunk_size=4,
  ),
}


def segsum(a: Array) -> Array:
  """[..., Q] -> [..., Q, Q]: out[..., l, m] = a_{m+1} + ... + a_l for
  m <= l, -inf above the diagonal (cumsum of masked copies, no
  differences of large cumsums)."""
  q = a.shape[-1]
  strict = jnp.tril(jnp.ones((q, q), bool), -1)
  rep = jnp.where(
    strict, jnp.broadcast_to(a[..., :, None], a.shape + (q,)), 0.0
  )  # [..., Q(k), Q(m)] = a_k for k > m
  out = jnp.cumsum(rep, axis=-2)
  return jnp.where(jnp.tril(jnp.ones((q, q), bool)), out, -jnp.inf)


def _chunk(x: Array, pad: int, q: int) -> Array:
  """[B, T, ...] -> [B, Z, Q, ...], zero-padded at the end."""
  x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
  return x.reshape(x.shape[0], -1, q, *x.shape[2:])


def ssd_chunked(
  x: Array, dt: Array, a: Array, b: Array, c: Array, h0: Array, chunk_size: int
) -> tuple[Array, Array]:
  """Chunked SSD scan (`ssd_minimal` with an initial state and groups).

  Args:
    x: [B, T, H, K]; dt: [B, T, H] (0 at invalid steps); a: [H] (< 0);
      b, c: [B, T, G, S]; h0: [B, H, K, S] state before the first step.
    chunk_size: Q upper bound.

  Returns:
    (y_t = h_t C_t [B, T, H, K] without the D skip, final state
    [B, H, K, S]).
  """
  bsz, t, h, k = x.shape
  g, s = b.shape[2], b.shape[3]
  q = min(chunk_size, t)
  pad = -t % q
  ld = _chunk((dt * a[None, None]).reshape(bsz, t, g, h // g), pad, q)
  xd = _chunk((x * dt[..., None]).reshape(bsz, t, g, h // g, k), pad, q)
  b, c = _chunk(b, pad, q), _chunk(c, pad, q)  # [B, Z, Q, G, S]
  ein = lambda *ops: jnp.einsum(*ops, precision=SCAN_PRECISION)
  cum = jnp.cumsum(ld, axis=2)  # [B, Z, Q, G, R]
  # 1. Within a chunk: y_l += sum_{m <= l} (C_l · B_m) e^{cum_l - cum_m} x_m.
  decay = jnp.exp(segsum(jnp.moveaxis(ld, 2, -1)))  # [B, Z, G, R, Q, M]
  y = ein("BZQGS,BZMGS,BZGRQM,BZMGRK->BZQGRK", c, b, decay, xd)
  # 2. Each chunk's own contribution to its end state.
  to_end = jnp.exp(cum[:, :, -1:] - cum)  # [B, Z, Q, G, R]
  states = ein("BZQGS,BZQGR,BZQGRK->BZGRKS", b, to_end, xd)
  # 3. Across chunks: the state entering each chunk, and the final state.
  states = jnp.concatenate(
    [h0.reshape(bsz, 1, g, h // g, k, s), states], axis=1
  )
  total = jnp.pad(cum[:, :, -1], [(0, 0), (1, 0), (0, 0), (0, 0)])
  across = jnp.exp(segsum(jnp.moveaxis(total, 1, -1)))  # [B, G, R, Y, Z]
  states = ein("BGRYZ,BZGRKS->BYGRKS", across, states)
  # 4. The entering state's contribution to every output of the chunk.
  y = y + ein("BZQGS,BZGRKS,BZQGR->BZQGRK", c, states[:, :-1], jnp.exp(cum))
  y = y.reshape(bsz, -1, h, k)[:, :t]  # [B, T, H, K]
  return y, states[:, -1].reshape(bsz, h, k, s)


def ssd_step(
  x: Array, dt: Array, a: Array, b: Array, c: Array, h: Array, valid: Array
) -> tuple[Array, Array]:
  """One recurrent step; x [B, H, K], dt [B, H], a [H], b, c [B, G, S],
  h [B, H, K, S], valid [B] -> (y [B, H, K] without D skip, new h,
  unchanged where not valid)."""
  r = x.shape[1] // b.shape[1]
  b, c = jnp.repeat(b, r, axis=1), jnp.repeat(c, r, axis=1)  # [B, H, S]
  decay = jnp.exp(dt * a[None])[..., None, None]  # [B, H, 1, 1]
  new = decay * h + (x * dt[..., None])[..., None] * b[:, :, None]
  new = jnp.where(valid[:, None, None, None], new, h)
  return jnp.einsum("BHKS,BHS->BHK", new, c, precision=SCAN_PRECISION), new


class GatedRMSNorm(nnx.Module):
  """HF `MambaRMSNormGated`: RMSNorm over groups of y · SiLU(z), float32.

  Args:
    size: E.
    group_size: channels per normalisation group (E / G).
    eps: epsilon.
    param_dtype: parameter dtype.
  """

  def __init__(
    self, size: int, group_size: int, eps: float, *, param_dtype: DTypeLike
  ):
    self.weight = nnx.Param(jnp.ones((size,), param_dtype))
    self.group_size, self.eps = group_size, eps

  def __call__(self, y: Array, z: Array) -> Array:
    """y, z [B, T, E] -> [B, T, E] float32."""
    y = y.astype(jnp.float32) * jax.nn.silu(z.astype(jnp.float32))
    yg = y.reshape(*y.shape[:-1], -1, self.group_size)  # [B, T, G, E / G]
    yg = yg * jax.lax.rsqrt(jnp.mean(yg * yg, -1, keepdims=True) + self.eps)
    return self.weight[...].astype(jnp.float32)[None, None] * yg.reshape(
      y.shape
    )


class Mamba2Mixer(nnx.Module):
  """HF `Mamba2Mixer` (torch path): in_proj → (z, xBC, Δ); SiLU(conv xBC)
  → (x, B, C); SSD with D skip; gated RMSNorm with z; out_proj.

  Args:
    cfg: sizes.
    rngs: initialisation (A = -(1..H) as HF, D = 1, Δ bias init).
  """

  def __init__(self, cfg: Mamba2Config, *, rngs: nnx.Rngs):
    e, h = cfg.d_inner, cfg.num_heads
    self.in_proj = make_linear(
      cfg, cfg.d_model, e + cfg.conv_dim + h, rngs, use_bias=cfg.use_bias
    )
    self.conv1d = CausalConv(
      cfg.conv_dim,
      cfg.d_conv,
      use_bias=cfg.use_conv_bias,
      param_dtype=cfg.param_dtype,
      rngs=rngs,
    )
    lo, hi = math.log(cfg.dt_min), math.log(cfg.dt_max)
    dt = jnp.exp(jax.random.uniform(rngs.params(), (h,)) * (hi - lo) + lo)
    dt = jnp.maximum(dt, cfg.dt_init_floor)
    self.dt_bias = nnx.Param(
      (dt + jnp.log(-jnp.expm1(-dt))).astype(cfg.param_dtype)
    )
    self.A_log = nnx.Param(
      jnp.log(jnp.arange(1, h + 1, dtype=jnp.float32)).astype(cfg.param_dtype)
    )
    self.D = nnx.Param(jnp.ones((h,), cfg.param_dtype))
    self.norm = GatedRMSNorm(
      e, e // cfg.n_groups, cfg.layer_norm_eps, param_dtype=cfg.param_dtype
    )
    self.out_proj = make_linear(
      cfg, e, cfg.d_model, rngs, use_bias=cfg.use_bias
    )
    self.sizes = (e, h, cfg.head_dim, cfg.n_groups, cfg.d_state)
    self.dt_limit, self.chunk_size = cfg.dt_limit, cfg.chunk_size
    self.dtype = cfg.dtype

  def __call__(
    self, x: Float[Array, "B T D"], cache: MambaCache, valid: Bool[Array, "B T"]
  ) -> tuple[Float[Array, "B T D"], MambaCache]:
    """Mixer output and updated cache (step path when T == 1)."""
    bsz, t, _ = x.shape
    e, h, k, g, s = self.sizes
    z, xbc, dt = jnp.split(self.in_proj(x), [e, e + e + 2 * g * s], axis=-1)
    xbc, conv = self.conv1d(xbc, cache.conv, valid)  # float32
    xs, b, c = jnp.split(xbc, [e, e + g * s], axis=-1)
    xs = xs.reshape(bsz, t, h, k)  # [B, T, H, K]
    b, c = b.reshape(bsz, t, g, s), c.reshape(bsz, t, g, s)  # [B, T, G, S]
    dt = jax.nn.softplus(
      dt.astype(jnp.float32) + self.dt_bias[...].astype(jnp.float32)[None, None]
    )
    dt = jnp.clip(dt, *self.dt_limit)
    dt = jnp.where(valid[..., None], dt, 0.0)  # [B, T, H]
    a = -jnp.exp(self.A_log[...].astype(jnp.float32))
    if t == 1:
      y, ssm = ssd_step(
        xs[:, 0], dt[:, 0], a, b[:, 0], c[:, 0], cache.ssm, valid[:, 0]
      )
      y = y[:, None]
    else:
      y, ssm = ssd_chunked(xs, dt, a, b, c, cache.ssm, self.chunk_size)
    y = y + self.D[...].astype(jnp.float32)[None, None, :, None] * xs
    y = self.norm(y.reshape(bsz, t, e), z)
    return self.out_proj(y.astype(self.dtype)), MambaCache(conv, ssm)


class Mamba2LM(MambaLMBase):
  """Mamba-2 LM (HF `Mamba2ForCausalLM`); see `MambaLMBase`.

  Args:
    cfg: a `Mamba2Config`.
    rngs: parameter initialisation.
  """

  config_cls = Mamba2Config

  @staticmethod
  def make_block(cfg: Mamba2Config, rngs: nnx.Rngs) -> ResidualBlock:
    return ResidualBlock(cfg, Mamba2Mixer(cfg, rngs=rngs), rngs=rngs)

  def cache_shapes(self, batch: int) -> MambaCache:
    """conv [B, E + 2GS, d_conv - 1], ssm [B, H, K, S]."""
    cfg = self.cfg
    return MambaCache(
      conv=(batch, cfg.conv_dim, cfg.d_conv - 1),
      ssm=(batch, cfg.num_heads, cfg.head_dim, cfg.d_state),
    )
