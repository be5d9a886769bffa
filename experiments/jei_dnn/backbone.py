"""JEI-DNN on a frozen ImageNet EfficientNet-Lite: IM inputs, the final head,
exit costs and the live exit stack.

The backbone has L = 5 layers: its 4 stages (the stem runs with stage 0)
and the head conv + pooling. Inference module l (l < 4) classifies stage
l's pooled output, standardised with the training split's statistics and
zero-padded to the widest stage (so the G = 4 IMs stack into one
`JeiHeads`; a zero input feature leaves a linear layer's output as on the
narrower vector). The final exit is a linear probe on the head features,
fitted once on the training split and frozen: the "backbone head" of
§8.2, whose ImageNet classifier does not fit CIFAR-10.

Training reads the cached features (`experiments.vision_common.features`);
`LiteJeiModel.exit_stack` runs the same computation live on images for the
FLOP count and the realised speed-ups.

Axes: B batch, N examples, G = 4 IMs, L = 5 exits, D padded width, C classes.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.vision_common.probe import (
  LinearProbe,
  Standardizer,
  fit_linear_probe,
)
from jaxexit import execution
from jaxexit.data.augment import resize
from jaxexit.execution.adapter import branches, exit_stack
from jaxexit.exits.outputs import ExitHeadOutput
from jaxexit.methods import jei_dnn
from jaxexit.models import efficientnet_lite
from jaxexit.models.cnn_stages import feature_shapes

NUM_STAGES = 4
NUM_LAYERS = NUM_STAGES + 1
NUM_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class JeiInputs:
  """What JEI-DNN trains on.

  Attributes:
    splits: "train" / "val" / "test" -> `CachedFeatures` (features [N, G,
      D] standardised padded pooled stages, final_logits [N, C] of the
      probe, labels [N]).
    standardizers: per stage, the pooled features' standardisation.
    probe: the final exit on the head features.
  """

  splits: dict[str, jei_dnn.CachedFeatures]
  standardizers: tuple[Standardizer, ...]
  probe: LinearProbe

  @property
  def width(self) -> int:
    return self.splits["train"].features.shape[-1]


def _im_inputs(feats: dict, standardizers, width: int) -> np.ndarray:
  parts = []
  for k, st in enumerate(standardizers):
    x = st(feats[f"pooled{k}"])
    parts.append(np.pad(x, ((0, 0), (0, width - x.shape[1]))))
  return np.stack(parts, axis=1)


def jei_inputs(features: dict, labels: dict, probe_steps: int) -> JeiInputs:
  """`features[split]` from `split_features`, `labels[split]` [N] ints."""
  train = features["train"]
  standardizers = tuple(
    Standardizer.fit(train[f"pooled{k}"]) for k in range(NUM_STAGES)
  )
  width = max(len(st.mean) for st in standardizers)
  probe = fit_linear_probe(
    train["head"], labels["train"], NUM_CLASSES, steps=probe_steps
  )
  splits = {
    name: jei_dnn.CachedFeatures(
      _im_inputs(feats, standardizers, width),
      probe(feats["head"]).astype(np.float32),
      np.asarray(labels[name], np.int32),
    )
    for name, feats in features.items()
  }
  return JeiInputs(splits, standardizers, probe)


class LiteJeiModel(nnx.Module):
  """The frozen backbone, the IM/gate heads and the final probe, live.

  Args:
    cnn: the EfficientNet-Lite (eval mode).
    inputs: the standardisations and the probe (`jei_inputs`).
    heads: the JEI-DNN heads.
  """

  def __init__(self, cnn, inputs: JeiInputs, heads: jei_dnn.JeiHeads):
    self.cnn = cnn
    self.heads = heads
    st = inputs.standardizers
    width = inputs.width
    pad = lambda v, fill: np.pad(v, (0, width - len(v)), constant_values=fill)
    self.mean = nnx.Variable(
      jnp.asarray(np.stack([pad(s.mean, 0) for s in st]))
    )
    self.std = nnx.Variable(jnp.asarray(np.stack([pad(s.std, 1) for s in st])))
    self.widths = tuple(len(s.mean) for s in st)
    self.probe_kernel = nnx.Variable(jnp.asarray(inputs.probe.kernel))
    self.probe_bias = nnx.Variable(jnp.asarray(inputs.probe.bias))
    self.probe_mean = nnx.Variable(jnp.asarray(inputs.probe.standardizer.mean))
    self.probe_std = nnx.Variable(jnp.asarray(inputs.probe.standardizer.std))

  def im_input(self, k: int, x: jax.Array) -> jax.Array:
    """Stage k's map [B, h, w, C_k] -> standardised padded [B, D]."""
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    pooled = jnp.pad(
      pooled, ((0, 0), (0, self.mean.shape[1] - pooled.shape[1]))
    )
    return (pooled - self.mean[k][None]) / self.std[k][None]

  def final_logits(self, head: jax.Array) -> jax.Array:
    """Head features [B, F] -> probe logits [B, C]."""
    mean, std = self.probe_mean[...][None], self.probe_std[...][None]
    z = (head.astype(jnp.float32) - mean) / std
    return z @ self.probe_kernel[...] + self.probe_bias[...][None]

  def init_carry(self, images: np.ndarray, resolution: int) -> dict:
    """uint8 [B, H, W, 3] -> the stack's input: the preprocessed images at
    `resolution` and a zero slot for every layer's output (static shapes).

    Returns:
      `{"image": [B, r, r, 3], "x1".."x4": stage maps, "head": [B, F]}`;
      layer k reads "image"/"x{k}" and writes "x{k+1}" ("head" at k = 4).
    """
    x = efficientnet_lite.preprocess(resize(jnp.asarray(images), resolution))
    batch = x.shape[0]
    shapes = feature_shapes(self.cnn, (resolution, resolution, 3))[1:]
    carry = {"image": x}
    for k, shape in enumerate(shapes, start=1):
      carry[f"x{k}"] = jnp.zeros((batch,) + shape, jnp.float32)
    carry["head"] = jnp.zeros((batch, self.cnn.cfg.head_channels), jnp.float32)
    return carry

  def exit_stack(self):
    """`(stack, params)` over `init_carry`'s carries, L = 5 layers."""
    return exit_stack(
      branches(self.cnn, NUM_LAYERS, _layer),
      branches(self, NUM_LAYERS, _head),
    )


def _layer(cnn, k: int, carry: dict) -> dict:
  """Layer k: stem + stage 0, stages 1-3, then the head conv + pooling."""
  if k == 0:
    return {**carry, "x1": cnn.stage(0, cnn.stem(carry["image"]))}
  if k < NUM_STAGES:
    return {**carry, f"x{k + 1}": cnn.stage(k, carry[f"x{k}"])}
  return {**carry, "head": cnn.head_features(carry[f"x{k}"])}


def _head(model: LiteJeiModel, k: int, carry: dict) -> ExitHeadOutput:
  if k < NUM_STAGES:
    return model.heads(k, model.im_input(k, carry[f"x{k + 1}"]))
  logits = model.final_logits(carry["head"])
  return ExitHeadOutput(logits=logits, score=jnp.ones(logits.shape[:1]))


def load_model(variant: str, inputs: JeiInputs, heads) -> LiteJeiModel:
  """The ImageNet backbone `variant` with `inputs`' probe and `heads`."""
  return LiteJeiModel(
    efficientnet_lite.load_efficientnet_lite(variant), inputs, heads
  )


def exit_flops(model: LiteJeiModel, resolution: int) -> execution.ExitFlops:
  """XLA-counted FLOPs per example of every exit of the live stack."""
  stack, params = model.exit_stack()
  one = model.init_carry(np.zeros((1, 32, 32, 3), np.uint8), resolution)
  return execution.exit_flops(stack, params, one)
