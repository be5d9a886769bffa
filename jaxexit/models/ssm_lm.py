# Over 400 lines: 387 before ruff format; the LM shell of both Mambas.
"""What Mamba-1 (`jaxexit.models.mamba`) and Mamba-2 (`jaxexit.models.mamba2`)
share: the block cache and output types, config checks, the masked depthwise
causal conv, the pre-norm residual block and `MambaLMBase` (embeddings,
stacked blocks, final norm, (un)tied head and the `DecoderBackbone` methods;
a subclass supplies the block and its cache shapes).

Masking contract (spec `llm_exits.md` §1.3). An invalid step must leave a
block's state untouched: the mixer sets Δ := 0 there, which makes the SSM
step the identity, and the depthwise causal conv reads, for every position,
its previous d_conv - 1 *valid* inputs (`masked_causal_conv`), so the conv
window never shifts on an invalid step. Valid steps may sit anywhere in a
call (right padding, a catch-up window whose prefix is already absorbed,
holes in the middle). Hence `freeze` is the identity. HF instead zeroes
padded inputs, which still decays the state and shifts the conv window:
right padding agrees with HF, left padding differs by design.

Axes: B batch, T tokens, D width (HF `hidden_size`), V vocabulary, L layers,
S SSM state, E inner width, C conv channels (E for Mamba-1, E + 2GS for
Mamba-2), W = d_conv conv width; Mamba-2's state adds H heads, K head dim.
"""

import dataclasses
import math
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from jaxexit import checks
from jaxexit.execution.adapter import layer_module
from jaxexit.nn.remat import remat_call
from jaxexit.typing import Array, Bool, Float, Int, PyTree


class MambaCache(NamedTuple):
  """One block's recurrent state (float32).

  Attributes:
    conv: [B, C, d_conv - 1] the last d_conv - 1 valid conv inputs, oldest
      first (zeros before the first valid token).
    ssm: [B, E, S] (Mamba-1) or [B, H, K, S] (Mamba-2) SSM state.
  """

  conv: Array
  ssm: Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MambaOutput:
  """Full forward pass of a Mamba LM.

  Attributes:
    logits: [B, T, V] float32.
    hidden_states: tuple of L + 1 arrays [B, T, D]: the embeddings, then each
      block's output, all before `norm_f`. HF transformers 5 returns a
      different tuple of L + 1: the L block outputs then norm_f(last), no
      embeddings; so HF[l] == ours[l + 1] for l < L and HF[L] ==
      final_norm(ours[L]).
  """

  # Documentation types only: JAX rebuilds pytree fields with tracers.
  logits: PyTree
  hidden_states: PyTree


def check_sizes(cfg, positive: tuple[str, ...]) -> None:
  """Raises ValueError unless every field in `positive` is an int >= 1 and
  `layer_norm_eps` > 0."""
  name = type(cfg).__name__
  for field in positive:
    value = getattr(cfg, field)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name}.{field} must be an int >= 1; got {value!r}")
  if not cfg.layer_norm_eps > 0:
    raise ValueError(
      f"{name}.layer_norm_eps must be > 0; got {cfg.layer_norm_eps!r}"
    )


def check_hf_common(hf: dict, model_type: str) -> None:
  """Rejects HF configs this port does not implement."""
  if hf.get("model_type", model_type) != model_type:
    raise ValueError(
      f"config.json model_type={hf.get('model_type')!r}; "
      f"expected {model_type!r}"
    )
  act = hf.get("hidden_act", "silu")
  if act not in ("silu", "swish"):
    raise ValueError(f"hidden_act={act!r} unsupported; only 'silu'")


def masked_causal_conv(
  x: Array, state: Array, valid: Array, weight: Array, bias: Array | None
) -> tuple[Array, Array]:
  """Depthwise causal conv over the valid steps only (parallel form).

  Valid steps are packed to the front (stable sort), convolved after the
  cached inputs, and each position reads the output of the last valid step
  at or before it, so a window only ever holds valid inputs.

  Args:
    x: [B, T, C] inputs.
    state: [B, C, W - 1] cached previous valid inputs, W = d_conv.
    valid: [B, T] bool.
    weight: [C, W] (HF conv1d.weight[:, 0]); bias: [C] or None.

  Returns:
    (pre-activation output [B, T, C] float32, garbage at positions before
    the first valid step; new state [B, C, W - 1], the last W - 1 valid
    inputs).
  """
  t, width = x.shape[1], weight.shape[1]
  order = jnp.argsort((~valid).astype(jnp.int32), axis=1, stable=True)
  packed = jnp.take_along_axis(
    x.astype(jnp.float32), order[..., None], axis=1
  )  # [B, T, C]
  ext = jnp.concatenate([state.transpose(0, 2, 1), packed], axis=1)
  out = sum(
    ext[:, k : k + t] * weight[None, None, :, k] for k in range(width)
  )  # [B, T, C]
  if bias is not None:
    out = out + bias[None, None].astype(jnp.float32)
  count = jnp.cumsum(valid.astype(jnp.int32), axis=1)  # [B, T]
  src = jnp.maximum(count - 1, 0)
  out = jnp.take_along_axis(out, src[..., None], axis=1)  # [B, T, C]
  keep = count[:, -1:] + jnp.arange(width - 1)[None]  # [B, W - 1]
  new_state = jnp.take_along_axis(ext, keep[..., None], axis=1)
  return out, new_state.transpose(0, 2, 1)


def causal_conv_step(
  x: Array, state: Array, valid: Array, weight: Array, bias: Array | None
) -> tuple[Array, Array]:
  """One decode step of the depthwise conv.

  Args:
    x: [B, C]; state: [B, C, W - 1]; valid: [B]; weight: [C, W];
      bias: [C] or None.

  Returns:
    (pre-activation output [B, C] float32, new state [B, C, W - 1], shifted
    only where valid).
  """
  window = jnp.concatenate(
    [state, x[..., None].astype(jnp.float32)], axis=-1
  )  # [B, C, W]
  out = sum(
    window[:, :, k] * weight[None, :, k] for k in range(weight.shape[1])
  )  # [B, C]
  if bias is not None:
    out = out + bias[None].astype(jnp.float32)
  return out, jnp.where(valid[:, None, None], window[..., 1:], state)


class CausalConv(nnx.Module):
  """Depthwise causal conv (HF `conv1d`): step for T == 1, else parallel.

  Args:
    channels: C.
    width: W = d_conv.
    use_bias: a per-channel bias.
    param_dtype: parameter dtype.
    rngs: initialisation (torch's kaiming-uniform bound 1/sqrt(W)).
  """

  def __init__(
    self,
    channels: int,
    width: int,
    *,
    use_bias: bool,
    param_dtype: DTypeLike,
    rngs: nnx.Rngs,
  ):
    bound = 1.0 / math.sqrt(width)
    self.weight = nnx.Param(
      jax.random.uniform(
        rngs.params(), (channels, width), param_dtype, -bound, bound
      )
    )
    self.bias = (
      nnx.Param(jnp.zeros((channels,), param_dtype)) if use_bias else None
    )

  def __call__(
    self, x: Array, state: Array, valid: Array
  ) -> tuple[Array, Array]:
    """x [B, T, C], state [B, C, W - 1], valid [B, T] -> (SiLU(conv) [B, T, C]
    float32, new state)."""
    w = self.weight[...].astype(jnp.float32)
    b = None if self.bias is None else self.bias[...]
    if x.shape[1] == 1:
      out, state = causal_conv_step(x[:, 0], state, valid[:, 0], w, b)
      return jax.nn.silu(out)[:, None], state
    out, state = masked_causal_conv(x, state, valid, w, b)
    return jax.nn.silu(out), state


def make_linear(
  cfg, d_in: int, d_out: int, rngs: nnx.Rngs, *, use_bias: bool, **kw
) -> nnx.Linear:
  return nnx.Linear(
    d_in,
    d_out,
    use_bias=use_bias,
    dtype=cfg.dtype,
    param_dtype=cfg.param_dtype,
    rngs=rngs,
    **kw,
  )


class ResidualBlock(nnx.Module):
  """HF `MambaBlock`/`Mamba2Block`: h + mixer(RMSNorm(h)).

  Args:
    cfg: a `MambaConfig` or `Mamba2Config`.
    mixer: the mixer module.
    rngs: initialisation.
  """

  def __init__(self, cfg, mixer: nnx.Module, *, rngs: nnx.Rngs):
    self.norm = nnx.RMSNorm(
      cfg.d_model,
      epsilon=cfg.layer_norm_eps,
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      rngs=rngs,
    )
    self.mixer = mixer

  def __call__(
    self, h: Float[Array, "B T D"], cache: MambaCache, valid: Bool[Array, "B T"]
  ) -> tuple[Float[Array, "B T D"], MambaCache]:
    out, cache = self.mixer(self.norm(h), cache, valid)
    return h + out.astype(h.dtype), cache


class MambaLMBase(nnx.Module):
  """Embeddings, L stacked residual blocks, norm_f and the LM head.

  Implements `jaxexit.decoding.backbone.DecoderBackbone`. Block parameters
  are stacked on a leading L axis (`nnx.vmap`), so `__call__` scans over
  depth and `layer(i, ...)` slices block `i`. Subclasses define
  `make_block(cfg, rngs)` and `cache_shapes(batch)`.

  Args:
    cfg: sizes.
    rngs: parameter initialisation (weights are usually loaded with
      `jaxexit.models.mamba_weights`).
  """

  config_cls: ClassVar[type]

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    if not isinstance(cfg, self.config_cls):
      raise ValueError(
        f"{type(self).__name__} needs a "
        f"{self.config_cls.__name__}; got {type(cfg).__name__}"
      )
    self.cfg = cfg
    self.num_layers, self.d_model = cfg.num_layers, cfg.d_model
    self.vocab_size = cfg.vocab_size
    self.max_position = None  # The recurrent state has no length limit.
    self.embeddings = nnx.Embed(
      cfg.vocab_size,
      cfg.d_model,
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      embedding_init=nnx.initializers.normal(0.02),
      rngs=rngs,
    )

    make_block = type(self).make_block

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make_layers(rngs):
      return make_block(cfg, rngs)

    self.layers = make_layers(rngs)
    self.norm_f = nnx.RMSNorm(
      cfg.d_model,
      epsilon=cfg.layer_norm_eps,
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      rngs=rngs,
    )
    self.lm_head_linear = (
      None
      if cfg.tie_embeddings
      else make_linear(cfg, cfg.d_model, cfg.vocab_size, rngs, use_bias=False)
    )

  @staticmethod
  def make_block(cfg, rngs: nnx.Rngs) -> ResidualBlock:
    raise NotImplementedError

  def cache_shapes(self, batch: int) -> MambaCache:
    """`MambaCache` of shape tuples for one layer."""
    raise NotImplementedError

  def init_layer_cache(self, batch: int) -> MambaCache:
    """One layer's zero state, float32."""
    return MambaCache(
      *(jnp.zeros(s, jnp.float32) for s in self.cache_shapes(batch))
    )

  @property
  def residual_dtype(self):
    return jnp.float32 if self.cfg.residual_in_fp32 else self.cfg.dtype

  def embed(self, tokens: Int[Array, "B T"]) -> Float[Array, "B T D"]:
    """Token embeddings in the residual dtype (layer 0's input).

    Concrete ids are checked (`checks.token_ids`); traced ones never are,
    even with debug checks on: the decoding engine calls this inside its
    jitted loop, after checking the prompts on the host.
    """
    if not isinstance(tokens, jax.core.Tracer):
      checks.token_ids("tokens", tokens, self.vocab_size)
    return self.embeddings(tokens).astype(self.residual_dtype)

  def init_cache(self, batch: int, max_len: int) -> tuple[MambaCache, ...]:
    """Zero state per layer; `max_len` is unused (the state is O(1))."""
    for name, value in (("batch", batch), ("max_len", max_len)):
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1; got {name}={value!r}")
    return tuple(self.init_layer_cache(batch) for _ in range(self.num_layers))

  def block(self, i: int) -> ResidualBlock:
    """Block `i` (a Python or traced int) with its own parameter slice."""
    return layer_module(self.layers, i)

  def _check(self, i, h, cache, positions, valid) -> None:
    """Static checks (shapes are known at trace time, so free under jit)."""
    if isinstance(i, int) and not 0 <= i < self.num_layers:
      raise ValueError(f"layer index i={i} out of range [0, {self.num_layers})")
    if h.ndim != 3 or h.shape[-1] != self.d_model or 0 in h.shape[:2]:
      raise ValueError(
        f"h.shape={h.shape} must be [B, T, {self.d_model}] with B, T >= 1"
      )
    for name, x in (("positions", positions), ("valid", valid)):
      if x.shape != h.shape[:2]:
        raise ValueError(
          f"{name}.shape={x.shape} must be [B, T] = {h.shape[:2]}"
        )
    want = self.cache_shapes(h.shape[0])
    for name, got, shape in zip(MambaCache._fields, cache, want):
      if tuple(got.shape) != shape:
        raise ValueError(
          f"cache.{name}.shape={tuple(got.shape)}; expected {shape}"
        )

  def layer(
    self,
    i: int,
    h: Float[Array, "B T D"],
    cache: MambaCache,
    positions: Int[Array, "B T"],
    valid: Bool[Array, "B T"],
  ) -> tuple[Float[Array, "B T D"], MambaCache]:
    """Block `i` on h: T == 1 the recurrent step, T > 1 the masked parallel
    scan continuing from `cache`. Outputs at invalid steps are garbage;
    `positions` is unused (the state follows the order of valid steps)."""
    self._check(i, h, cache, positions, valid)
    return self.block(i)(h, cache, valid.astype(bool))

  def layer_sequential(
    self,
    i: int,
    h: Float[Array, "B T D"],
    cache: MambaCache,
    positions: Int[Array, "B T"],
    valid: Bool[Array, "B T"],
  ) -> tuple[Float[Array, "B T D"], MambaCache]:
    """Reference for `layer`: a `lax.scan` of the T == 1 step over T."""
    self._check(i, h, cache, positions, valid)
    block = self.block(i)

    def step(c, xs):
      h_t, v_t = xs
      out, c = block(h_t[:, None], c, v_t[:, None])
      return c, out[:, 0]

    cache, out = jax.lax.scan(
      step, cache, (h.swapaxes(0, 1), valid.astype(bool).swapaxes(0, 1))
    )
    return out.swapaxes(0, 1), cache

  def propagate(
    self,
    i: int,
    h: Float[Array, "B T D"],
    cache: MambaCache,
    positions: Int[Array, "B T"],
    valid: Bool[Array, "B T"],
  ) -> MambaCache:
    """The full state update of block `i` on h, its output dropped."""
    return self.layer(i, h, cache, positions, valid)[1]

  def freeze(
    self,
    i: int,
    cache: MambaCache,
    positions: Int[Array, "B T"],
    valid: Bool[Array, "B T"],
  ) -> MambaCache:
    """Identity: a skipped step is Δ = 0 with the conv window not shifted."""
    return cache

  def final_norm(self, h: Float[Array, "B T D"]) -> Float[Array, "B T D"]:
    """HF `norm_f`."""
    return self.norm_f(h)

  def lm_head(self, h: Float[Array, "B T D"]) -> Float[Array, "B T V"]:
    """float32 logits, tied to the embeddings or untied."""
    if self.lm_head_linear is None:
      w = self.embeddings.embedding[...]
      return jnp.einsum(
        "BTD,VD->BTV", h.astype(w.dtype), w, preferred_element_type=jnp.float32
      )
    w = self.lm_head_linear.kernel[...]
    return jnp.einsum(
      "BTD,DV->BTV", h.astype(w.dtype), w, preferred_element_type=jnp.float32
    )

  def __call__(
    self, tokens: Int[Array, "B T"], valid: Bool[Array, "B T"] | None = None
  ) -> MambaOutput:
    """Forward pass from a zero state, scanning over depth.

    Args:
      tokens: [B, T] ids in [0, V) (checked when concrete).
      valid: [B, T] bool; None means all valid (e.g. False at right padding).

    Returns:
      `MambaOutput` (see its docstring for the HF hidden-state mapping).
    """
    # Also traced ids, with debug checks on (`embed` checks concrete only).
    checks.token_ids("tokens", tokens, self.vocab_size)
    h = self.embed(tokens)
    valid = (
      jnp.ones(tokens.shape, bool) if valid is None else valid.astype(bool)
    )
    if valid.shape != tokens.shape:
      raise ValueError(
        f"valid.shape={valid.shape} must equal tokens.shape={tokens.shape}"
      )
    cache = self.init_layer_cache(tokens.shape[0])
    graphdef, state = nnx.split(self.layers)

    def block(params, x):
      return nnx.merge(graphdef, params)(x, cache, valid)[0]

    def body(x, params):
      out = remat_call(block, params, x)
      return out, out

    last, hs = jax.lax.scan(body, h, state)
    logits = self.lm_head(self.final_norm(last))
    return MambaOutput(logits=logits, hidden_states=(h, *hs))
