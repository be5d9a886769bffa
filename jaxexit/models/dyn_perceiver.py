# Over 400 lines: one paper's two-branch model; its four segments and its
# loss share the private stage helpers.
"""Dynamic Perceiver: a CNN feature branch + a latent classification branch.

Han et al., "Dynamic Perceiver for Efficient Visual Recognition", ICCV 2023
(encoder_exits.md §9; official code LeapLabTHU/Dynamic_Perceiver,
`dyn_perceiver_regnet.py`). Two branches run side by side over 4 stages:

  feature branch X   any CNN with the `cnn_stages` interface (stem, 4 stages)
  latents Z          L, L/2, L/4, L/8 tokens; the channels of Z in stage s
                     are the channels X has entering CNN stage s

Stage s: [between stages: token mixer (LN + Linear over tokens), token
expander (LN + Linear over channels), z2x cross-attention (X's pixels query
Z, d_qk = d_v = C/8)], x2z cross-attention (Z queries AvgPool≤7×7(DWConv7×7(X)
+ X), 1 head, relative position bias added to the keys), self-attention
blocks on Z, CNN stage s on X. After stage 4 a last z2x updates X.

Four exits in compute order (§9.1; pitfall 10: not in CNN-stage order):
  y_e3     mean(Z after stage-3 SA) -> Linear         needs CNN stages 1-2
  y_att    [mean Z_4, ISC(y_e3)] -> Linear             needs CNN stages 1-3
  y_cnn    the CNN's own pool + classifier on X_4
  y_merge  [pool(z2x(X_4, Z_4)), mean Z_4, ISC(y_att)] -> BN -> Linear
ISC ("inter-classifier connection") = Linear(C -> D) + BN + ReLU.

Loss (§9.2, `dyn_perceiver_loss`): 1.0·CE(y_cnn) + 0.5·(CE(y_att) + CE(y_e3))
+ 1.0·CE(y_merge) + α_kd·T²·Σ_{e≠merge} KL(softmax(y_merge/T) ‖ softmax(y_e/T)).

`exit_stack()` exposes the model to `jaxexit.execution` as 4 segments
(segment k = the compute after exit k-1 that produces exit k). Segments have
different shapes, so the carry is one fixed-shape dict holding every
intermediate a later segment needs (zeros until computed) and the layer
index picks the segment with `lax.switch`. Each exit's logits are computed
inside its segment and kept in the carry (y_e3 and y_att feed the ISCs of
later exits, and the full model needs them anyway), so the heads only read
them (and compute the max-softmax confidence): the XLA-counted FLOPs of exit
k (`execution.exit_flops`) are those of everything needed to produce y_k,
as in the official `forward_calc_flops`.

Axes: B batch, H/W height/width, C channels (C classes for logits), T latent
tokens, D latent channels, N pooled pixel tokens, K head dim, L exits.
"""

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxexit import checks
from jaxexit.execution.adapter import branches, exit_stack, indexed
from jaxexit.execution.stack import ExitStack
from jaxexit.exits.confidence import max_softmax
from jaxexit.exits.losses import (
  cross_entropy_per_exit,
  kl_self_distillation,
  weighted_exit_loss,
)
from jaxexit.exits.outputs import ExitHeadOutput
from jaxexit.models.cnn_stages import (
  NUM_STAGES,
  batch_norm,
  check_image,
  feature_shapes,
)
from jaxexit.typing import Array, Float, Int

# §9.2 loss weights, in exit order (y_e3, y_att, y_cnn, y_merge).
EXIT_WEIGHTS = (0.5, 0.5, 1.0, 1.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DynPerceiverConfig:
  """Sizes of the latent branch (the feature branch brings its own).

  Attributes:
    num_classes: C.
    image_size: H = W of the inputs (sets the pooled-token counts).
    num_latents: T of stage 1 (halved each stage; a multiple of 8).
    sa_depths: self-attention layers per stage (official [3, 3, 9, 3]·f).
    sa_heads: self-attention heads per stage (official [1, 2, 4, 8]).
    sa_widening: self-attention MLP hidden / width.
    ca_widening: cross-attention MLP hidden / width.
    pool_size: x2z keys are average-pooled to at most pool_size².
    dwc_kernel: kernel of the x2z depthwise conv.
  """

  num_classes: int = 10
  image_size: int = 32
  num_latents: int = 16
  sa_depths: tuple[int, ...] = (1, 1, 2, 1)
  sa_heads: tuple[int, ...] = (1, 2, 4, 8)
  sa_widening: int = 4
  ca_widening: int = 1
  pool_size: int = 7
  dwc_kernel: int = 7

  def __post_init__(self):
    for name in (
      "num_classes",
      "image_size",
      "num_latents",
      "sa_widening",
      "ca_widening",
      "pool_size",
      "dwc_kernel",
    ):
      checks.positive_int(f"DynPerceiverConfig.{name}", getattr(self, name))
    if self.num_latents % 8:
      raise ValueError(
        "DynPerceiverConfig.num_latents must be a multiple of "
        f"8 (halved 3 times); got {self.num_latents}"
      )
    for name in ("sa_depths", "sa_heads"):
      value = getattr(self, name)
      if len(value) != NUM_STAGES:
        raise ValueError(
          f"DynPerceiverConfig.{name} needs {NUM_STAGES} "
          f"entries; got {name}={value!r}"
        )
      for v in value:
        checks.positive_int(
          f"DynPerceiverConfig.{name} entry",
          v,
          minimum=0 if name == "sa_depths" else 1,
        )

  @property
  def latent_tokens(self) -> tuple[int, ...]:
    """T per stage: L, L/2, L/4, L/8."""
    return tuple(self.num_latents >> s for s in range(NUM_STAGES))


def adaptive_pool_matrix(size: int, out: int) -> np.ndarray:
  """[out, size] averaging weights of PyTorch's AdaptiveAvgPool1d.

  Window i covers [floor(i·size/out), ceil((i+1)·size/out)).
  """
  m = np.zeros((out, size), np.float32)
  for i in range(out):
    lo, hi = (i * size) // out, -((-(i + 1) * size) // out)
    m[i, lo:hi] = 1.0 / (hi - lo)
  return m


def layer_norm(d: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
  # Two-pass variance: the token mixer normalises over latent tokens whose
  # spread is small next to their mean, where the one-pass E[x²] − E[x]²
  # form cancels (it moved jit vs eager logits by 1e-3).
  return nnx.LayerNorm(d, epsilon=1e-5, use_fast_variance=False, rngs=rngs)


class Mlp(nnx.Module):
  """Pre-LN MLP: fc2(gelu(fc1(LN x))) (the residual is the caller's)."""

  def __init__(self, d: int, widening: int, *, rngs: nnx.Rngs):
    self.norm = layer_norm(d, rngs)
    self.fc1 = nnx.Linear(d, widening * d, rngs=rngs)
    self.fc2 = nnx.Linear(widening * d, d, rngs=rngs)

  def __call__(self, x: Float[Array, "B T D"]) -> Float[Array, "B T D"]:
    return self.fc2(jax.nn.gelu(self.fc1(self.norm(x)), approximate=False))


class Attention(nnx.Module):
  """Multi-head attention with pre-LN on queries and keys/values.

  q, k, v projections have no bias; the output projection does. A learned
  relative position bias `[N, qk]` (x2z) is added to the projected keys.
  """

  def __init__(
    self,
    q_in: int,
    kv_in: int,
    qk: int,
    v: int,
    heads: int,
    *,
    key_tokens: int | None = None,
    rngs: nnx.Rngs,
  ):
    if qk % heads or v % heads:
      raise ValueError(
        f"attention widths qk={qk}, v={v} must be divisible by heads={heads}"
      )
    self.q_norm = layer_norm(q_in, rngs)
    self.kv_norm = layer_norm(kv_in, rngs)
    self.q = nnx.Linear(q_in, qk, use_bias=False, rngs=rngs)
    self.k = nnx.Linear(kv_in, qk, use_bias=False, rngs=rngs)
    self.v = nnx.Linear(kv_in, v, use_bias=False, rngs=rngs)
    self.o = nnx.Linear(v, q_in, rngs=rngs)
    self.heads = heads
    self.key_bias = (
      None
      if key_tokens is None
      else nnx.Param(jnp.zeros((key_tokens, qk), jnp.float32))
    )

  def __call__(
    self, x_q: Float[Array, "B T E"], x_kv: Float[Array, "B N F"]
  ) -> Float[Array, "B T E"]:
    x_q, x_kv = self.q_norm(x_q), self.kv_norm(x_kv)
    q, k, v = self.q(x_q), self.k(x_kv), self.v(x_kv)
    if self.key_bias is not None:
      k = k + self.key_bias[...][None]
    split = lambda y: y.reshape(y.shape[:2] + (self.heads, -1))  # [B,T,H,K]
    q, k, v = split(q), split(k), split(v)
    logits = jnp.einsum(
      "BTHK,BNHK->BHTN", q, k, preferred_element_type=jnp.float32
    )
    probs = jax.nn.softmax(logits / math.sqrt(q.shape[-1]), axis=-1)
    out = jnp.einsum("BHTN,BNHK->BTHK", probs.astype(v.dtype), v)
    return self.o(out.reshape(out.shape[:2] + (-1,)))  # [B, T, H·K] -> E


class AttentionLayer(nnx.Module):
  """x = x + Attn(x, kv); x = x + MLP(x) (cross- or self-attention)."""

  def __init__(
    self,
    q_in: int,
    kv_in: int,
    qk: int,
    heads: int,
    widening: int,
    *,
    key_tokens: int | None = None,
    rngs: nnx.Rngs,
  ):
    self.attn = Attention(
      q_in, kv_in, qk, qk, heads, key_tokens=key_tokens, rngs=rngs
    )
    self.mlp = Mlp(q_in, widening, rngs=rngs)

  def __call__(
    self, x: Float[Array, "B T E"], kv: Float[Array, "B N F"] | None = None
  ) -> Float[Array, "B T E"]:
    x = x + self.attn(x, x if kv is None else kv)
    return x + self.mlp(x)


class NormLinear(nnx.Module):
  """LayerNorm + Linear over the last axis (token mixer/expander)."""

  def __init__(self, d_in: int, d_out: int, *, rngs: nnx.Rngs):
    self.norm = layer_norm(d_in, rngs)
    self.linear = nnx.Linear(d_in, d_out, rngs=rngs)

  def __call__(self, x: Float[Array, "*b D"]) -> Float[Array, "*b E"]:
    return self.linear(self.norm(x))


class Isc(nnx.Module):
  """Inter-classifier connection: ReLU(BN(Linear(logits)))."""

  def __init__(self, num_classes: int, d: int, *, rngs: nnx.Rngs):
    self.linear = nnx.Linear(num_classes, d, rngs=rngs)
    self.norm = batch_norm(d, rngs=rngs)

  def __call__(self, logits: Float[Array, "B C"]) -> Float[Array, "B D"]:
    return jax.nn.relu(self.norm(self.linear(logits)))


def z2x(
  layer: AttentionLayer, x: Float[Array, "B H W C"], z: Float[Array, "B T D"]
) -> Float[Array, "B H W C"]:
  """Every pixel of X queries the latents Z."""
  b, h, w, c = x.shape
  return layer(x.reshape(b, h * w, c), z).reshape(b, h, w, c)


def pooled_keys(
  dwc: nnx.Conv, x: Float[Array, "B H W C"], pool_size: int
) -> Float[Array, "B N C"]:
  """x2z keys/values: AvgPool_to_≤pool_size²(DWConv(X) + X) as tokens."""
  b, h, w, c = x.shape
  kv = jnp.einsum(
    "BHWC,hH,wW->BhwC",
    dwc(x) + x,
    adaptive_pool_matrix(h, min(pool_size, h)),
    adaptive_pool_matrix(w, min(pool_size, w)),
  )
  return kv.reshape(b, -1, c)  # [B, N, C]


def latent_stage(
  dwc: nnx.Conv,
  x2z: AttentionLayer,
  sa: Sequence[AttentionLayer],
  x: Float[Array, "B H W C"],
  z: Float[Array, "B T D"],
  pool_size: int,
) -> Float[Array, "B T D"]:
  """One latent stage: Z queries the pooled map X (x2z), then SA on Z."""
  z = x2z(z, pooled_keys(dwc, x, pool_size))
  for layer in sa:
    z = layer(z)
  return z


class DynPerceiver(nnx.Module):
  """Dynamic Perceiver over any feature branch with the `cnn_stages` API.

  Args:
    cfg: the latent branch's sizes.
    feature_branch: `StagedCNN`, the EfficientNet-Lite0, or any module with
      `stem`, `stage(i, x)`, `head_features`, `classifier`.
    rngs: initialisation of the latent branch and the exits.
  """

  def __init__(
    self, cfg: DynPerceiverConfig, feature_branch: nnx.Module, *, rngs: nnx.Rngs
  ):
    self.cfg = cfg
    self.cnn = feature_branch
    shapes = feature_shapes(feature_branch, (cfg.image_size,) * 2 + (3,))
    self.map_shapes = tuple(shapes)  # stem, then each stage's output
    dims = tuple(shape[-1] for shape in shapes[:NUM_STAGES])
    _check_widths(cfg, dims, shapes[-1][-1])
    tokens, c, w = cfg.latent_tokens, cfg.num_classes, cfg.ca_widening
    self.latent = nnx.Param(
      jnp.clip(
        0.02 * jax.random.normal(rngs.params(), (tokens[0], dims[0])), -2.0, 2.0
      )
    )
    k = cfg.dwc_kernel
    self.dwc = nnx.List(
      [
        nnx.Conv(
          d,
          d,
          (k, k),
          padding=((k // 2,) * 2,) * 2,
          feature_group_count=d,
          rngs=rngs,
        )
        for d in dims
      ]
    )
    self.x2z = nnx.List(
      [
        AttentionLayer(
          d,
          d,
          d,
          1,
          w,
          rngs=rngs,
          key_tokens=min(cfg.pool_size, hh) * min(cfg.pool_size, ww),
        )
        for d, (hh, ww, _) in zip(dims, shapes)
      ]
    )
    self.sa = nnx.List(
      [
        nnx.List(
          [
            AttentionLayer(d, d, d, heads, cfg.sa_widening, rngs=rngs)
            for _ in range(depth)
          ]
        )
        for d, heads, depth in zip(dims, cfg.sa_heads, cfg.sa_depths)
      ]
    )
    self.mixers = nnx.List(
      [
        NormLinear(tokens[s], tokens[s + 1], rngs=rngs)
        for s in range(NUM_STAGES - 1)
      ]
    )
    self.expanders = nnx.List(
      [
        NormLinear(dims[s], dims[s + 1], rngs=rngs)
        for s in range(NUM_STAGES - 1)
      ]
    )
    c4 = shapes[-1][-1]
    self.z2x = nnx.List(
      [AttentionLayer(d, d, d // 8, 1, w, rngs=rngs) for d in dims[1:]]
      + [AttentionLayer(c4, dims[-1], c4 // 8, 1, w, rngs=rngs)]
    )
    self.early3 = nnx.Linear(dims[2], c, rngs=rngs)
    self.isc3 = Isc(c, dims[3], rngs=rngs)
    self.att = nnx.Linear(2 * dims[3], c, rngs=rngs)
    self.isc4 = Isc(c, dims[3], rngs=rngs)
    self.merge_norm = batch_norm(c4 + 2 * dims[3], rngs=rngs)
    self.merge = nnx.Linear(c4 + 2 * dims[3], c, rngs=rngs)

  # --- building blocks shared by the plain forward and the segments ------

  def _latents(self, batch: int) -> Float[Array, "B T D"]:
    z = self.latent[...]
    return jnp.broadcast_to(z[None], (batch,) + z.shape)

  def _latent_stage(self, s: int, x: Array, z: Array) -> Array:
    """x2z cross-attention from Z to the pooled map, then SA on Z."""
    return latent_stage(
      self.dwc[s], self.x2z[s], self.sa[s], x, z, self.cfg.pool_size
    )

  def _between(self, s: int, x: Array, z: Array) -> tuple[Array, Array]:
    """After CNN stage s: token mixer, expander, z2x into the map."""
    z = self.mixers[s](jnp.swapaxes(z, 1, 2))  # [B, D, T'] over tokens
    z = self.expanders[s](jnp.swapaxes(z, 1, 2))  # [B, T', D']
    return z2x(self.z2x[s], x, z), z

  def _y_e3(self, z: Array) -> Array:
    return self.early3(jnp.mean(z, axis=1))

  def _y_att(self, z: Array, y_e3: Array) -> Array:
    return self.att(
      jnp.concatenate([jnp.mean(z, axis=1), self.isc3(y_e3)], axis=-1)
    )

  def _y_cnn(self, x: Array) -> Array:
    return self.cnn.classifier(self.cnn.head_features(x))

  def _y_merge(self, x: Array, z: Array, y_att: Array) -> Array:
    x = z2x(self.z2x[NUM_STAGES - 1], x, z)
    f = jnp.concatenate(
      [jnp.mean(x, axis=(1, 2)), jnp.mean(z, axis=1), self.isc4(y_att)], axis=-1
    )
    return self.merge(self.merge_norm(f))

  def _check(self, images: Array) -> None:
    size = self.cfg.image_size
    check_image(images, 1)
    if images.shape[1:3] != (size, size):
      raise ValueError(
        f"images must be {size}x{size} "
        f"(DynPerceiverConfig.image_size={size}); got shape "
        f"{images.shape}"
      )

  # --- the plain reference forward ----------------------------------------

  def __call__(self, images: Float[Array, "B H W 3"]) -> Float[Array, "B L C"]:
    """All four exits `[B, 4, C]` (y_e3, y_att, y_cnn, y_merge), float32."""
    self._check(images)
    x = self.cnn.stem(images)
    z = self._latents(images.shape[0])
    logits = []
    for s in range(NUM_STAGES):
      if s > 0:
        x, z = self._between(s - 1, x, z)
      z = self._latent_stage(s, x, z)
      if s == 2:
        logits.append(self._y_e3(z))
      if s == 3:
        logits.append(self._y_att(z, logits[0]))
      x = self.cnn.stage(s, x)
    logits.append(self._y_cnn(x))
    logits.append(self._y_merge(x, z, logits[1]))
    return jnp.stack(logits, axis=1).astype(jnp.float32)

  # --- the execution-mode view ---------------------------------------------

  def init_carry(self, images: Float[Array, "B H W 3"]) -> dict:
    """The stack's fixed-shape input carry (zeros until computed).

    Returns:
      dict of batch-leading arrays: "image" [B, H, W, 3]; "x3_in", "x4_in"
      the maps entering CNN stages 3 and 4 (after z2x); "x4_out" the
      stage-4 map; "z3", "z4" the latents after stage-3/4 self-attention;
      "logits" [B, 4, C], exit k written by segment k.
    """
    self._check(images)
    b = images.shape[0]
    shapes, tokens = self.map_shapes, self.cfg.latent_tokens
    zeros = lambda *shape: jnp.zeros((b,) + shape, jnp.float32)
    return {
      "image": images.astype(jnp.float32),
      "x3_in": zeros(*shapes[2]),
      "x4_in": zeros(*shapes[3]),
      "x4_out": zeros(*shapes[4]),
      "z3": zeros(tokens[2], shapes[2][-1]),
      "z4": zeros(tokens[3], shapes[3][-1]),
      "logits": zeros(NUM_STAGES, self.cfg.num_classes),
    }

  def _segment0(self, carry: dict) -> dict:
    """Stem, CNN stages 1-2, latent stages 1-3 -> y_e3."""
    x = self.cnn.stem(carry["image"])
    z = self._latents(x.shape[0])
    for s in range(2):
      z = self._latent_stage(s, x, z)
      x, z = self._between(s, self.cnn.stage(s, x), z)
    z = self._latent_stage(2, x, z)
    return put_logits(carry, 0, self._y_e3(z), x3_in=x, z3=z)

  def _segment1(self, carry: dict) -> dict:
    """CNN stage 3, latent stage 4 -> y_att."""
    x = self.cnn.stage(2, carry["x3_in"])
    x, z = self._between(2, x, carry["z3"])
    z = self._latent_stage(3, x, z)
    y = self._y_att(z, carry["logits"][:, 0])
    return put_logits(carry, 1, y, x4_in=x, z4=z)

  def _segment2(self, carry: dict) -> dict:
    """CNN stage 4 -> y_cnn."""
    x = self.cnn.stage(3, carry["x4_in"])
    return put_logits(carry, 2, self._y_cnn(x), x4_out=x)

  def _segment3(self, carry: dict) -> dict:
    """Last z2x + merge head -> y_merge."""
    y = self._y_merge(carry["x4_out"], carry["z4"], carry["logits"][:, 1])
    return put_logits(carry, 3, y)

  def exit_stack(self) -> tuple[ExitStack, nnx.State]:
    """`(stack, params)`: 4 segments, eval-mode BatchNorm (see module doc).

    Layer k runs segment k (`lax.switch` when k is traced, a direct call
    for a Python int); the heads have no parameters: they read exit k's
    logits from the carry and add `extra["confidence"]` [B], the
    max-softmax probability the paper's exit rule thresholds.
    """
    return exit_stack(
      branches(self, NUM_STAGES, _segment),
      indexed(nnx.Dict(), NUM_STAGES, carried_exit),
    )


_SEGMENTS = ("_segment0", "_segment1", "_segment2", "_segment3")


def _segment(model: DynPerceiver, k: int, carry: dict) -> dict:
  model.eval()
  return getattr(model, _SEGMENTS[k])(carry)


def carried_exit(no_params: nnx.Dict, layer, carry: dict) -> ExitHeadOutput:
  del no_params
  logits = jax.lax.dynamic_index_in_dim(
    carry["logits"], layer, axis=1, keepdims=False
  )  # [B, C]
  return ExitHeadOutput(
    logits=logits, extra={"confidence": max_softmax(logits)}
  )


def put_logits(carry: dict, k: int, logits: Array, **maps) -> dict:
  """`carry` with exit k's logits and the given intermediates written."""
  all_logits = carry["logits"].at[:, k].set(logits.astype(jnp.float32))
  return {**carry, **maps, "logits": all_logits}


def _check_widths(
  cfg: DynPerceiverConfig, dims: tuple[int, ...], c4: int
) -> None:
  """Raises unless the branch's widths suit the latent branch's heads."""
  for s, (d, heads) in enumerate(zip(dims, cfg.sa_heads)):
    if d % heads:
      raise ValueError(
        f"latent width {d} of stage {s + 1} (the feature branch's channels "
        f"entering that stage) must be divisible by sa_heads[{s}]={heads}"
      )
  for name, d in (("stage 2-4 input", min(dims[1:])), ("stage-4 output", c4)):
    if d < 8:
      raise ValueError(
        f"z2x attention uses width C/8: the feature branch's "
        f"{name} channels must be >= 8; got {d}"
      )


def dyn_perceiver_loss(
  logits: Float[Array, "B L C"],
  labels: Int[Array, "B"],
  *,
  weights: Sequence[float] = EXIT_WEIGHTS,
  kd_weight: float = 0.5,
  temperature: float = 1.0,
  label_smoothing: float = 0.0,
) -> tuple[Float[Array, ""], dict]:
  """Σ_k w_k·CE_k + α_kd·T²·Σ_{k<L} KL(softmax(y_L/T) ‖ softmax(y_k/T)).

  §9.2 with the defaults (weights in exit order y_e3, y_att, y_cnn,
  y_merge); the multi-exit CNN baseline passes weights (1, 1, 1, 1). The
  teacher (last exit) is stop-gradient'ed. Label smoothing ε mixes the CE
  with the mean of −log p over classes.

  Args:
    logits: [B, L, C] per-exit logits, the teacher last.
    labels: [B] int labels.
    weights: [L] CE weights.
    kd_weight: α_kd ≥ 0 (0 disables self-distillation).
    temperature: T > 0.
    label_smoothing: ε in [0, 1).

  Returns:
    (scalar loss, metrics: scalars "ce", "kd" and "acc{k}", k = 1..L).
  """
  checks.in_range("kd_weight", kd_weight, 0.0, np.inf, high_open=True)
  checks.in_range("label_smoothing", label_smoothing, 0.0, 1.0, high_open=True)
  if len(weights) != logits.shape[1]:
    raise ValueError(
      f"weights needs one entry per exit ({logits.shape[1]}); "
      f"got weights={weights!r}"
    )
  ce = cross_entropy_per_exit(logits, labels)  # [B, L]
  if label_smoothing:
    uniform = -jnp.mean(jax.nn.log_softmax(logits, axis=-1), axis=-1)
    ce = (1.0 - label_smoothing) * ce + label_smoothing * uniform
  ce = weighted_exit_loss(ce, jnp.asarray(weights, jnp.float32))
  kd = kl_self_distillation(logits[:, :-1], logits[:, -1], temperature)
  acc = jnp.mean(jnp.argmax(logits, axis=-1) == labels[:, None], axis=0)
  metrics = {"ce": ce, "kd": kd}
  metrics.update({f"acc{k + 1}": acc[k] for k in range(logits.shape[1])})
  return ce + kd_weight * kd, metrics
