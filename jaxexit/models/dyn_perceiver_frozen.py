"""Dynamic Perceiver's latent branch over a frozen, cached CNN.

The classification branch of Dynamic Perceiver (encoder_exits.md §9; the
building blocks are `jaxexit.models.dyn_perceiver`'s) trained on top of a
frozen feature branch whose stage maps are computed once and cached
(`jaxexit.models.efficientnet_features`). Because the CNN is frozen, the
z2x cross-attention cannot feed the latents back into it: X is the frozen
CNN's own map at every stage, and only the merge exit reads Z into a map
(the last z2x). That is the one deviation from §9.1.

Latent stage s (s = 0..3) reads the map X entering CNN stage s in §9.1;
the cache has no stem map, so stages 0 and 1 both read CNN stage 0's map,
through one shared DWConv + pool (its key/value tokens are computed once):

  latent stage   0        1        2        3
  reads map      stage0   stage0   stage1   stage2

Exits in compute order (§9.1): an exit is available after the CNN stages
it reads.

  y_e3     mean Z after latent stage 2 -> Linear       CNN stages 0-1
  y_att    [mean Z_4, ISC(y_e3)] -> Linear             CNN stages 0-2
  y_cnn    Linear on the CNN's pooled head features     CNN stages 0-3 + head
  y_merge  [pool z2x(X_3, Z_4), head, mean Z_4, ISC(y_att)] -> BN -> Linear

`FrozenDynPerceiver` wraps a live CNN (stem, `stage(i, x)`,
`head_features`) and a trained `LatentBranch` as a 4-segment `ExitStack`
for `jaxexit.execution` (timing and XLA FLOPs), with the same carry layout
as `DynPerceiver`.

Axes: B batch, H/W height/width, E/G map channels, C classes, T latent
tokens, D latent channels, N pooled pixel tokens, F head features, L exits.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxexit import checks
from jaxexit.execution.adapter import branches, exit_stack, indexed
from jaxexit.execution.stack import ExitStack
from jaxexit.models.cnn_stages import NUM_STAGES, batch_norm
from jaxexit.models.dyn_perceiver import (
  AttentionLayer,
  Isc,
  NormLinear,
  carried_exit,
  pooled_keys,
  put_logits,
  z2x,
)
from jaxexit.typing import Array, Float

# The cached map each latent stage's x2z reads (see the module docstring).
READS = (0, 0, 1, 2)
MAP_NAMES = tuple(f"stage{i}" for i in range(NUM_STAGES))


@dataclasses.dataclass(frozen=True, kw_only=True)
class LatentBranchConfig:
  """Sizes of the latent branch and the frozen CNN's maps it reads.

  Attributes:
    map_shapes: `(H, W, C)` of the CNN's stage0..stage3 maps.
    head_dim: F of the CNN's pooled head features.
    num_classes: C.
    num_latents: T of stage 0 (halved each stage; a multiple of 8).
    widths: D of the latents per stage.
    sa_depths: self-attention layers per stage.
    sa_heads: self-attention heads per stage (each divides its width).
    sa_widening: self-attention MLP hidden / width.
    ca_widening: cross-attention MLP hidden / width.
    pool_size: x2z keys are average-pooled to at most pool_size².
    dwc_kernel: kernel of the x2z depthwise conv.
  """

  map_shapes: tuple[tuple[int, int, int], ...]
  head_dim: int
  num_classes: int = 10
  num_latents: int = 32
  widths: tuple[int, ...] = (48, 64, 96, 128)
  sa_depths: tuple[int, ...] = (1, 1, 2, 1)
  sa_heads: tuple[int, ...] = (1, 2, 4, 8)
  sa_widening: int = 4
  ca_widening: int = 1
  pool_size: int = 7
  dwc_kernel: int = 7

  def __post_init__(self):
    for name in ("head_dim", "num_classes", "num_latents", "sa_widening"):
      checks.positive_int(f"LatentBranchConfig.{name}", getattr(self, name))
    for name in ("ca_widening", "pool_size", "dwc_kernel"):
      checks.positive_int(f"LatentBranchConfig.{name}", getattr(self, name))
    if self.num_latents % 8:
      raise ValueError(
        "LatentBranchConfig.num_latents must be a multiple of 8 (halved 3 "
        f"times); got {self.num_latents}"
      )
    shapes = self.map_shapes
    if len(shapes) != NUM_STAGES or any(len(s) != 3 for s in shapes):
      raise ValueError(
        f"LatentBranchConfig.map_shapes needs {NUM_STAGES} (H, W, C) "
        f"tuples; got map_shapes={shapes!r}"
      )
    for name in ("widths", "sa_depths", "sa_heads"):
      if len(getattr(self, name)) != NUM_STAGES:
        raise ValueError(
          f"LatentBranchConfig.{name} needs {NUM_STAGES} entries; got "
          f"{name}={getattr(self, name)!r}"
        )
    for s, (d, h) in enumerate(zip(self.widths, self.sa_heads)):
      if d < 1 or h < 1 or d % h:
        raise ValueError(
          f"LatentBranchConfig.widths[{s}]={d} must be a positive multiple "
          f"of sa_heads[{s}]={h}"
        )
    if shapes[-1][-1] < 8:
      raise ValueError(
        "the merge z2x uses width C/8: the last map needs >= 8 channels; "
        f"got map_shapes[-1]={shapes[-1]!r}"
      )

  @property
  def latent_tokens(self) -> tuple[int, ...]:
    """T per stage: L, L/2, L/4, L/8."""
    return tuple(self.num_latents >> s for s in range(NUM_STAGES))


class LatentBranch(nnx.Module):
  """The latent classification branch on precomputed maps (4 exits)."""

  def __init__(self, cfg: LatentBranchConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    tokens, dims, c = cfg.latent_tokens, cfg.widths, cfg.num_classes
    maps = [cfg.map_shapes[r] for r in READS]
    self.latent = nnx.Param(
      jnp.clip(
        0.02 * jax.random.normal(rngs.params(), (tokens[0], dims[0])), -2, 2
      )
    )
    k, w = cfg.dwc_kernel, cfg.ca_widening
    self.dwc = nnx.List(  # one per map read: stage0, stage1, stage2
      [
        nnx.Conv(
          ch,
          ch,
          (k, k),
          padding=((k // 2,) * 2,) * 2,
          feature_group_count=ch,
          rngs=rngs,
        )
        for _, _, ch in cfg.map_shapes[: NUM_STAGES - 1]
      ]
    )
    self.x2z = nnx.List(
      [
        AttentionLayer(
          d,
          ch,
          d,
          1,
          w,
          key_tokens=min(cfg.pool_size, hh) * min(cfg.pool_size, ww),
          rngs=rngs,
        )
        for d, (hh, ww, ch) in zip(dims, maps)
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
      [NormLinear(tokens[s], tokens[s + 1], rngs=rngs) for s in range(3)]
    )
    self.expanders = nnx.List(
      [NormLinear(dims[s], dims[s + 1], rngs=rngs) for s in range(3)]
    )
    c3, f = cfg.map_shapes[-1][-1], cfg.head_dim
    self.z2x = AttentionLayer(c3, dims[3], c3 // 8, 1, w, rngs=rngs)
    self.early3 = nnx.Linear(dims[2], c, rngs=rngs)
    self.isc3 = Isc(c, dims[3], rngs=rngs)
    self.att = nnx.Linear(2 * dims[3], c, rngs=rngs)
    self.cnn_head = nnx.Linear(f, c, rngs=rngs)
    self.isc4 = Isc(c, dims[3], rngs=rngs)
    self.merge_norm = batch_norm(c3 + f + 2 * dims[3], rngs=rngs)
    self.merge = nnx.Linear(c3 + f + 2 * dims[3], c, rngs=rngs)

  def _keys(self, m: int, x: Array) -> Float[Array, "B N E"]:
    """Key/value tokens of map m: pool(DWConv(X) + X)."""
    return pooled_keys(self.dwc[m], x.astype(jnp.float32), self.cfg.pool_size)

  def _stage(self, s: int, kv: Array, z: Array) -> Array:
    """[mixer + expander,] x2z from Z to the tokens kv, then SA on Z."""
    if s > 0:
      z = self.mixers[s - 1](jnp.swapaxes(z, 1, 2))  # [B, D, T'] tokens
      z = self.expanders[s - 1](jnp.swapaxes(z, 1, 2))  # [B, T', D']
    z = self.x2z[s](z, kv)
    for layer in self.sa[s]:
      z = layer(z)
    return z

  def early(
    self, x0: Float[Array, "B H W E"], x1: Float[Array, "B h w G"]
  ) -> tuple[Float[Array, "B T D"], Float[Array, "B C"]]:
    """Latent stages 0-2 on the stage0/stage1 maps -> (Z_3, y_e3)."""
    z = self.latent[...]
    z = jnp.broadcast_to(z[None], (x0.shape[0],) + z.shape)
    kv0 = self._keys(0, x0)
    for s, kv in enumerate((kv0, kv0, self._keys(1, x1))):
      z = self._stage(s, kv, z)
    return z, self.early3(jnp.mean(z, axis=1))

  def attend(
    self, x2: Float[Array, "B H W E"], z3: Array, y_e3: Float[Array, "B C"]
  ) -> tuple[Float[Array, "B T D"], Float[Array, "B C"]]:
    """Latent stage 3 on the stage2 map -> (Z_4, y_att)."""
    z = self._stage(3, self._keys(2, x2), z3)
    f = jnp.concatenate([jnp.mean(z, axis=1), self.isc3(y_e3)], axis=-1)
    return z, self.att(f)

  def cnn_exit(self, head: Float[Array, "B F"]) -> Float[Array, "B C"]:
    """y_cnn: a linear classifier on the CNN's pooled head features."""
    return self.cnn_head(head.astype(jnp.float32))

  def merge_exit(
    self,
    x3: Float[Array, "B H W E"],
    head: Float[Array, "B F"],
    z4: Float[Array, "B T D"],
    y_att: Float[Array, "B C"],
  ) -> Float[Array, "B C"]:
    """y_merge: the last z2x (X_3 queries Z_4), pooled, with the head
    features, mean Z_4 and ISC(y_att) -> BN -> Linear."""
    x = z2x(self.z2x, x3.astype(jnp.float32), z4)
    f = jnp.concatenate(
      [
        jnp.mean(x, axis=(1, 2)),
        head.astype(jnp.float32),
        jnp.mean(z4, axis=1),
        self.isc4(y_att),
      ],
      axis=-1,
    )
    return self.merge(self.merge_norm(f))

  def __call__(self, maps: dict) -> Float[Array, "B L C"]:
    """`{"stage0".."stage3": [B, H, W, C], "head": [B, F]}` -> `[B, 4, C]`
    float32 logits (y_e3, y_att, y_cnn, y_merge)."""
    self._check(maps)
    z3, y_e3 = self.early(maps["stage0"], maps["stage1"])
    z4, y_att = self.attend(maps["stage2"], z3, y_e3)
    y_cnn = self.cnn_exit(maps["head"])
    y_merge = self.merge_exit(maps["stage3"], maps["head"], z4, y_att)
    out = jnp.stack([y_e3, y_att, y_cnn, y_merge], axis=1)
    return out.astype(jnp.float32)

  def _check(self, maps: dict) -> None:
    missing = [n for n in MAP_NAMES + ("head",) if n not in maps]
    if missing:
      raise ValueError(
        f"maps lacks {missing}; got keys {sorted(maps)} (need stage0..stage3 "
        "and head)"
      )
    for name, want in zip(MAP_NAMES, self.cfg.map_shapes):
      if tuple(maps[name].shape[1:]) != tuple(want):
        raise ValueError(
          f"maps[{name!r}] must be [B, {', '.join(map(str, want))}] "
          f"(LatentBranchConfig.map_shapes); got {maps[name].shape}"
        )
    if maps["head"].shape[1:] != (self.cfg.head_dim,):
      raise ValueError(
        f"maps['head'] must be [B, {self.cfg.head_dim}]; got "
        f"{maps['head'].shape}"
      )


class FrozenDynPerceiver(nnx.Module):
  """A live frozen CNN + a trained `LatentBranch` as a 4-segment stack.

  Args:
    cnn: the feature branch (`stem`, `stage(i, x)`, `head_features`); its
      stage maps must have the shapes the latent branch was built for.
    latent: the trained latent branch.
  """

  def __init__(self, cnn: nnx.Module, latent: LatentBranch):
    self.cnn = cnn
    self.latent = latent

  def __call__(self, images: Float[Array, "B H W 3"]) -> Float[Array, "B L C"]:
    """All four exits `[B, 4, C]` from preprocessed images."""
    carry = self.init_carry(images)
    for k in range(NUM_STAGES):
      carry = _segment(self, k, carry)
    return carry["logits"]

  def init_carry(self, images: Float[Array, "B H W 3"]) -> dict:
    """The stack's fixed-shape carry (zeros until computed).

    Returns:
      dict of batch-leading arrays: "image" [B, H, W, 3]; "x2_in", "x3_in"
      the stage1/stage2 maps; "x3" the stage3 map; "head" [B, F]; "z3",
      "z4" the latents after stages 2 and 3; "logits" [B, 4, C].
    """
    cfg = self.latent.cfg
    b, shapes, t = images.shape[0], cfg.map_shapes, cfg.latent_tokens
    zeros = lambda *shape: jnp.zeros((b,) + tuple(shape), jnp.float32)
    return {
      "image": jnp.asarray(images, jnp.float32),
      "x2_in": zeros(*shapes[1]),
      "x3_in": zeros(*shapes[2]),
      "x3": zeros(*shapes[3]),
      "head": zeros(cfg.head_dim),
      "z3": zeros(t[2], cfg.widths[2]),
      "z4": zeros(t[3], cfg.widths[3]),
      "logits": zeros(NUM_STAGES, cfg.num_classes),
    }

  def _segment0(self, carry: dict) -> dict:
    """Stem, CNN stages 0-1, latent stages 0-2 -> y_e3."""
    x0 = self.cnn.stage(0, self.cnn.stem(carry["image"]))
    x1 = self.cnn.stage(1, x0)
    z3, y = self.latent.early(x0, x1)
    return put_logits(carry, 0, y, x2_in=x1, z3=z3)

  def _segment1(self, carry: dict) -> dict:
    """CNN stage 2, latent stage 3 -> y_att."""
    x2 = self.cnn.stage(2, carry["x2_in"])
    z4, y = self.latent.attend(x2, carry["z3"], carry["logits"][:, 0])
    return put_logits(carry, 1, y, x3_in=x2, z4=z4)

  def _segment2(self, carry: dict) -> dict:
    """CNN stage 3 and head -> y_cnn."""
    x3 = self.cnn.stage(3, carry["x3_in"])
    head = self.cnn.head_features(x3)
    return put_logits(carry, 2, self.latent.cnn_exit(head), x3=x3, head=head)

  def _segment3(self, carry: dict) -> dict:
    """The last z2x and the merge head -> y_merge."""
    y = self.latent.merge_exit(
      carry["x3"], carry["head"], carry["z4"], carry["logits"][:, 1]
    )
    return put_logits(carry, 3, y)

  def exit_stack(self) -> tuple[ExitStack, nnx.State]:
    """`(stack, params)`: 4 segments in eval mode; the heads read exit k's
    logits from the carry (as `DynPerceiver.exit_stack`)."""
    return exit_stack(
      branches(self, NUM_STAGES, _segment),
      indexed(nnx.Dict(), NUM_STAGES, carried_exit),
    )


_SEGMENTS = ("_segment0", "_segment1", "_segment2", "_segment3")


def _segment(model: FrozenDynPerceiver, k: int, carry: dict) -> dict:
  model.eval()
  return getattr(model, _SEGMENTS[k])(carry)
