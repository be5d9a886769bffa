# Over 400 lines: 345 before ruff format; CNN and multi-exit baseline.
"""A small staged CNN (stem + 4 stages) and its multi-exit baseline.

The feature-branch interface that `dyn_perceiver.DynPerceiver` builds on
(Dynamic Perceiver, Han et al. ICCV 2023, encoder_exits.md §9.1: "an ordinary
CNN split into stem + 4 stages"); `efficientnet_lite.EfficientNetLite0`
exposes the same methods:

  stem(x)            [B, H, W, 3] -> [B, H0, W0, C0]
  num_stages         4
  stage_channels     (C1, C2, C3, C4), the output channels of each stage
  stage(i, x)        stage i (0-based) -> [B, Hi, Wi, Ci]
  head_features(x)   [B, H4, W4, C4] -> [B, F] (global average pool)
  classifier(f)      [B, F] -> [B, C] logits

`StagedCNN` stacks either ResNet basic blocks (two dense 3×3 convs; the
default, because XLA's depthwise convolutions are 3–10× slower per FLOP on
CPU, forward and backward) or MobileNetV2 inverted residuals (1×1 expand,
3×3 depthwise, 1×1 project), all with BatchNorm + ReLU.
`MultiExitCNN` is the classic early-exit baseline on the same backbone: a
GAP + Linear exit after stages 1–3 and the CNN's own classifier after stage 4,
exposed to `jaxexit.execution` as a 4-layer `ExitStack` (one layer per
stage).

BatchNorm uses batch statistics in train mode and running averages in eval
mode (`model.eval()`); `exit_stack()` always runs in eval mode, so each
example's exit is independent of the rest of the batch (§12 pitfall 11).

Axes: B batch, H/W height/width, C channels (C classes for logits), L exits.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from jaxexit import checks
from jaxexit.execution.adapter import branches, exit_stack
from jaxexit.execution.stack import ExitStack
from jaxexit.typing import Array, Float

NUM_STAGES = 4
BLOCKS = ("basic", "inverted_residual")
BN_MOMENTUM = 0.9  # PyTorch's momentum 0.1 in Flax's convention.


@dataclasses.dataclass(frozen=True, kw_only=True)
class StagedCNNConfig:
  """Sizes of `StagedCNN`.

  Attributes:
    num_classes: C of the CNN's own classifier.
    stem_channels: C0, output channels of the 3×3 stem conv.
    stem_stride: stride of the stem conv.
    channels: (C1, C2, C3, C4) output channels per stage.
    depths: blocks per stage.
    strides: stride of each stage's first block.
    block: "basic" (ResNet) or "inverted_residual" (MobileNetV2).
    expansion: inverted residuals: hidden width / input width (1: no expand
      conv).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  num_classes: int = 10
  stem_channels: int = 16
  stem_stride: int = 1
  channels: tuple[int, ...] = (24, 48, 96, 192)
  depths: tuple[int, ...] = (1, 1, 2, 1)
  strides: tuple[int, ...] = (1, 2, 2, 2)
  block: str = "basic"
  expansion: int = 4
  dtype: DTypeLike = jnp.float32
  param_dtype: DTypeLike = jnp.float32

  def __post_init__(self):
    for name in ("num_classes", "stem_channels", "stem_stride", "expansion"):
      checks.positive_int(f"StagedCNNConfig.{name}", getattr(self, name))
    checks.one_of("StagedCNNConfig.block", self.block, BLOCKS)
    for name in ("channels", "depths", "strides"):
      value = getattr(self, name)
      if len(value) != NUM_STAGES:
        raise ValueError(
          f"StagedCNNConfig.{name} needs {NUM_STAGES} "
          f"entries (one per stage); got {name}={value!r}"
        )
      for v in value:
        checks.positive_int(f"StagedCNNConfig.{name} entry", v)

  @property
  def total_stride(self) -> int:
    """Input size / stage-4 output size."""
    stride = self.stem_stride
    for s in self.strides:
      stride *= s
    return stride


def check_image(images: Array, total_stride: int) -> None:
  """Raises unless images are `[B, H, W, 3]` with H, W multiples of the
  total stride (so every stage halves an integer size, down to ≥ 1)."""
  shape = tuple(images.shape)
  if len(shape) != 4 or shape[-1] != 3:
    raise ValueError(f"images must be [B, H, W, 3]; got shape {shape}")
  for name, size in (("height", shape[1]), ("width", shape[2])):
    if size < total_stride or size % total_stride:
      raise ValueError(
        f"image {name}={size} must be a positive multiple of the feature "
        f"branch's total stride {total_stride} (stem and 4 stages); got "
        f"images.shape={shape}"
      )


def _conv(
  cfg, c_in: int, c_out: int, kernel: int, stride: int, rngs, groups: int = 1
) -> nnx.Conv:
  # Symmetric k//2 padding (PyTorch's convention), not "SAME", which pads
  # stride-2 convs on one side only.
  pad = kernel // 2
  return nnx.Conv(
    c_in,
    c_out,
    (kernel, kernel),
    (stride, stride),
    padding=((pad, pad), (pad, pad)),
    feature_group_count=groups,
    use_bias=False,
    dtype=cfg.dtype,
    param_dtype=cfg.param_dtype,
    rngs=rngs,
  )


def batch_norm(
  features: int,
  *,
  rngs: nnx.Rngs,
  dtype: DTypeLike = jnp.float32,
  param_dtype: DTypeLike = jnp.float32,
) -> nnx.BatchNorm:
  """BatchNorm with PyTorch's defaults (momentum 0.1, eps 1e-5)."""
  return nnx.BatchNorm(
    features,
    momentum=BN_MOMENTUM,
    epsilon=1e-5,
    use_fast_variance=False,
    dtype=dtype,
    param_dtype=param_dtype,
    rngs=rngs,
  )


class ConvBN(nnx.Module):
  """Conv → BatchNorm → optional ReLU."""

  def __init__(
    self,
    cfg,
    c_in: int,
    c_out: int,
    kernel: int,
    stride: int,
    *,
    groups: int = 1,
    relu: bool = True,
    rngs: nnx.Rngs,
  ):
    self.conv = _conv(cfg, c_in, c_out, kernel, stride, rngs, groups)
    self.norm = batch_norm(
      c_out, rngs=rngs, dtype=cfg.dtype, param_dtype=cfg.param_dtype
    )
    self.relu = relu

  def __call__(self, x: Float[Array, "B H W C"]) -> Float[Array, "B h w D"]:
    x = self.norm(self.conv(x))
    return jax.nn.relu(x) if self.relu else x


class BasicBlock(nnx.Module):
  """ResNet basic block: relu(BN(conv3×3(relu(BN(conv3×3 x)))) + shortcut)."""

  def __init__(
    self,
    cfg: StagedCNNConfig,
    c_in: int,
    c_out: int,
    stride: int,
    *,
    rngs: nnx.Rngs,
  ):
    self.conv1 = ConvBN(cfg, c_in, c_out, 3, stride, rngs=rngs)
    self.conv2 = ConvBN(cfg, c_out, c_out, 3, 1, relu=False, rngs=rngs)
    self.shortcut = (
      None
      if stride == 1 and c_in == c_out
      else ConvBN(cfg, c_in, c_out, 1, stride, relu=False, rngs=rngs)
    )

  def __call__(self, x: Float[Array, "B H W C"]) -> Float[Array, "B h w D"]:
    skip = x if self.shortcut is None else self.shortcut(x)
    return jax.nn.relu(self.conv2(self.conv1(x)) + skip)


class InvertedResidual(nnx.Module):
  """MobileNetV2 block: [1×1 expand] → 3×3 depthwise → 1×1 project (+x)."""

  def __init__(
    self,
    cfg: StagedCNNConfig,
    c_in: int,
    c_out: int,
    stride: int,
    *,
    rngs: nnx.Rngs,
  ):
    hidden = c_in * cfg.expansion
    self.expand = (
      ConvBN(cfg, c_in, hidden, 1, 1, rngs=rngs) if cfg.expansion != 1 else None
    )
    self.depthwise = ConvBN(
      cfg, hidden, hidden, 3, stride, groups=hidden, rngs=rngs
    )
    self.project = ConvBN(cfg, hidden, c_out, 1, 1, relu=False, rngs=rngs)
    self.residual = stride == 1 and c_in == c_out

  def __call__(self, x: Float[Array, "B H W C"]) -> Float[Array, "B h w D"]:
    h = x if self.expand is None else self.expand(x)
    h = self.project(self.depthwise(h))
    return x + h if self.residual else h


class StagedCNN(nnx.Module):
  """Stem + 4 stages of residual blocks + GAP + Linear.

  Args:
    cfg: sizes.
    rngs: parameter initialisation.
  """

  num_stages = NUM_STAGES

  def __init__(self, cfg: StagedCNNConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.stem_conv = ConvBN(
      cfg, 3, cfg.stem_channels, 3, cfg.stem_stride, rngs=rngs
    )
    block = BasicBlock if cfg.block == "basic" else InvertedResidual
    stages, c_in = [], cfg.stem_channels
    for c_out, depth, stride in zip(cfg.channels, cfg.depths, cfg.strides):
      blocks = []
      for b in range(depth):
        blocks.append(
          block(cfg, c_in, c_out, stride if b == 0 else 1, rngs=rngs)
        )
        c_in = c_out
      stages.append(nnx.List(blocks))
    self.stages = nnx.List(stages)
    self.classifier = nnx.Linear(
      c_in,
      cfg.num_classes,
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      rngs=rngs,
    )

  @property
  def stage_channels(self) -> tuple[int, ...]:
    return tuple(self.cfg.channels)

  def stem(self, images: Float[Array, "B H W 3"]) -> Float[Array, "B h w C"]:
    """The stem conv; raises ValueError on an image size it cannot take."""
    check_image(images, self.cfg.total_stride)
    return self.stem_conv(images)

  def stage(
    self, i: int, x: Float[Array, "B H W C"]
  ) -> Float[Array, "B h w D"]:
    """Stage `i` (0-based, a Python int)."""
    for block in self.stages[i]:
      x = block(x)
    return x

  def head_features(self, x: Float[Array, "B H W C"]) -> Float[Array, "B C"]:
    """Global average pool of the stage-4 map."""
    return jnp.mean(x, axis=(1, 2))

  def __call__(self, images: Float[Array, "B H W 3"]) -> Float[Array, "B C"]:
    """The plain CNN: stem, 4 stages, pool, classifier -> logits."""
    x = self.stem(images)
    for i in range(self.num_stages):
      x = self.stage(i, x)
    return self.classifier(self.head_features(x))


def feature_shapes(
  branch: nnx.Module, image_shape: tuple[int, ...]
) -> list[tuple[int, ...]]:
  """Per-example shapes `[H, W, C]` of the stem output and of each stage's
  output for images of `image_shape = (H, W, 3)`, traced abstractly."""
  graphdef, state = nnx.split(branch)

  def run(s, images):
    model = nnx.merge(graphdef, s)
    model.eval()
    maps = [model.stem(images)]
    for i in range(model.num_stages):
      maps.append(model.stage(i, maps[-1]))
    return maps

  images = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)
  return [tuple(m.shape[1:]) for m in jax.eval_shape(run, state, images)]


class MultiExitCNN(nnx.Module):
  """A feature branch with a max-softmax-ready exit after every stage.

  Exits 1–3 are GAP + Linear on the stage output; exit 4 is the branch's own
  `head_features` + `classifier` (so the full model is the plain CNN).

  Args:
    cnn: the feature branch (`StagedCNN` or the EfficientNet-Lite0).
    num_classes: C.
    image_size: H = W of the inputs (sets the carry shapes).
    rngs: initialisation of the exit heads.
  """

  def __init__(
    self, cnn: nnx.Module, num_classes: int, image_size: int, *, rngs: nnx.Rngs
  ):
    checks.positive_int("num_classes", num_classes)
    checks.positive_int("image_size", image_size)
    self.cnn = cnn
    self.image_size = image_size
    self.map_shapes = tuple(feature_shapes(cnn, (image_size, image_size, 3)))
    self.exits = nnx.List(
      [
        nnx.Linear(shape[-1], num_classes, rngs=rngs)
        for shape in self.map_shapes[1:NUM_STAGES]
      ]
    )

  def _exit(self, k: int, x: Array) -> Array:
    if k < NUM_STAGES - 1:
      return self.exits[k](jnp.mean(x, axis=(1, 2)))
    return self.cnn.classifier(self.cnn.head_features(x))

  def __call__(self, images: Float[Array, "B H W 3"]) -> Float[Array, "B L C"]:
    """Plain reference forward: logits of the 4 exits in order."""
    x = self.cnn.stem(images)
    logits = []
    for k in range(NUM_STAGES):
      x = self.cnn.stage(k, x)
      logits.append(self._exit(k, x))
    return jnp.stack(logits, axis=1).astype(jnp.float32)

  def init_carry(self, images: Float[Array, "B H W 3"]) -> dict:
    """The stack's input: the images, a zero map per stage output and zero
    logits of the CNN's own classifier.

    Returns:
      `{"image": [B, H, W, 3], "x1".."x4": [B, Hk, Wk, Ck], "cnn_logits":
      [B, C]}`; segment k reads "image"/"x{k}" and writes "x{k+1}", the last
      one also "cnn_logits".
    """
    check_image(images, 1)
    if images.shape[1:3] != (self.image_size, self.image_size):
      raise ValueError(
        f"images must be {self.image_size}x{self.image_size} "
        f"(MultiExitCNN.image_size); got shape {images.shape}"
      )
    batch = images.shape[0]
    carry = {"image": images.astype(jnp.float32)}
    for k, shape in enumerate(self.map_shapes[1:], start=1):
      carry[f"x{k}"] = jnp.zeros((batch,) + shape, jnp.float32)
    num_classes = self.exits[0].out_features
    carry["cnn_logits"] = jnp.zeros((batch, num_classes), jnp.float32)
    return carry

  def exit_stack(self) -> tuple[ExitStack, nnx.State]:
    """`(stack, params)`: 4 layers (the stages), eval-mode BatchNorm.

    Layer 3 also runs the CNN's own `head_features` + `classifier` (exit 4)
    and keeps its logits in the carry; `params["layers"]` is the CNN,
    `params["heads"]` the three GAP + Linear exits.
    """
    return exit_stack(
      branches(self.cnn, NUM_STAGES, _cnn_stage),
      branches(self.exits, NUM_STAGES, _stage_exit),
    )


def _cnn_stage(cnn: nnx.Module, k: int, carry: dict) -> dict:
  """Stage k (stem first for k = 0) in eval mode; the last stage also
  writes the CNN's own logits."""
  cnn.eval()
  x = cnn.stage(k, cnn.stem(carry["image"]) if k == 0 else carry[f"x{k}"])
  carry = {**carry, f"x{k + 1}": x}
  if k == NUM_STAGES - 1:
    logits = cnn.classifier(cnn.head_features(x)).astype(jnp.float32)
    carry["cnn_logits"] = logits
  return carry


def _stage_exit(exits: nnx.List, k: int, carry: dict) -> Float[Array, "B C"]:
  """GAP + Linear on stage k's output, the carried CNN logits at the last."""
  if k == NUM_STAGES - 1:
    return carry["cnn_logits"]
  return exits[k](jnp.mean(carry[f"x{k + 1}"], axis=(1, 2))).astype(jnp.float32)
