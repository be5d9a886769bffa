"""Frozen EfficientNet-Lite features of an image split, cached on disk.

The vision experiments put their trainable parts (JEI-DNN's inference
modules and gates, Dynamic Perceiver's latent branch, HiDrop's projector and
decoder) on top of a frozen ImageNet EfficientNet-Lite. `lite_features`
resizes uint8 images to a square `resolution`, runs the backbone once and
returns the requested outputs through `jaxexit.data.feature_cache`:

  "stage{i}":  the map after stage i, `[N, r/s_i, r/s_i, C_i]`, strides
               s = (4, 8, 16, 32) (Lite0 channels 24, 40, 112, 320);
  "pooled{i}": its global average, `[N, C_i]`;
  "head":      the head conv's pooled features, `[N, 1280]` (the input of
               the ImageNet classifier).

Features are stored as float16 (`FEATURE_DTYPE`); the backbone runs in
float32. Axes: N images, B batch, C channels.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxexit.data import feature_cache
from jaxexit.data.augment import resize
from jaxexit.models import efficientnet_lite

FEATURE_DTYPE = np.float16
RESOLUTION_STEP = 32  # The checkpoint's padding equals TF "SAME" there.
RESOLUTIONS = tuple(range(32, 513, RESOLUTION_STEP))
_OUTPUT = re.compile(r"^(stage|pooled)([0-3])$|^head$")


def check_resolution(resolution: int) -> None:
  """Raises a ValueError naming the valid sizes unless one is given."""
  if isinstance(resolution, bool) or resolution not in RESOLUTIONS:
    raise ValueError(
      f"EfficientNet-Lite features need a square resolution that is a "
      f"multiple of {RESOLUTION_STEP} from {RESOLUTIONS[0]} to "
      f"{RESOLUTIONS[-1]} (e.g. 96, 128); got {resolution!r}"
    )


def check_outputs(outputs: tuple[str, ...]) -> None:
  """Raises a ValueError unless every name is stage{i}, pooled{i} or head."""
  bad = [o for o in outputs if not _OUTPUT.match(str(o))]
  if not outputs or bad or len(set(outputs)) != len(outputs):
    raise ValueError(
      "outputs must be distinct names among stage0..stage3, pooled0..pooled3 "
      f"and head; got {outputs!r}"
    )


def forward_outputs(
  model: efficientnet_lite.EfficientNetLite,
  images: jax.Array | np.ndarray,
  resolution: int,
  outputs: tuple[str, ...],
) -> dict[str, jax.Array]:
  """`[B, H, W, 3]` uint8 images -> the named outputs (float32).

  Resizes to `resolution` (bilinear), normalises as the checkpoint expects
  and runs only the stages the outputs need.
  """
  x = efficientnet_lite.preprocess(resize(images, resolution))
  x = model.stem(x)
  stages = [int(o[-1]) for o in outputs if o != "head"]
  last = model.num_stages - 1 if "head" in outputs else max(stages)
  out = {}
  for i in range(last + 1):
    x = model.stage(i, x)
    if f"stage{i}" in outputs:
      out[f"stage{i}"] = x
    if f"pooled{i}" in outputs:
      out[f"pooled{i}"] = jnp.mean(x, axis=(1, 2))
  if "head" in outputs:
    out["head"] = model.head_features(x)
  return out


@functools.lru_cache(maxsize=4)
def _model(variant: str):
  model = efficientnet_lite.load_efficientnet_lite(variant)
  weights = feature_cache.file_hash(efficientnet_lite.checkpoint_path(variant))
  return nnx.split(model), weights


def lite_features(
  images: np.ndarray,
  split: str,
  *,
  variant: str = "lite0",
  resolution: int = 96,
  outputs: tuple[str, ...] = ("pooled0", "pooled1", "pooled2", "head"),
  cache_dir=None,
  batch_size: int = 128,
  progress: bool | None = None,
) -> dict[str, np.ndarray]:
  """Cached frozen EfficientNet-Lite features of `images`.

  Args:
    images: `[N, H, W, 3]` uint8 RGB.
    split: the split's name in the cache key (e.g. "cifar10-test").
    variant: "lite0", "lite1" or "lite2" (its weights package must be
      installed).
    resolution: square input size (a multiple of 32 in [32, 512]).
    outputs: names among stage0..3, pooled0..3, head.
    cache_dir: cache root (default `$JAXEXIT_CACHE`, else ~/.cache/jaxexit).
    batch_size: images per backbone call.
    progress: None: a bar on a terminal, lines in a log; False: silent.

  Returns:
    `{name: read-only float16 memmap [N, ...]}`.

  Raises:
    ImportError: naming the weights package, if it is not installed.
    ValueError: for a resolution the backbone cannot take (naming the valid
      ones), unknown outputs, or images that are not uint8 `[N, H, W, 3]`.
  """
  check_resolution(resolution)
  outputs = tuple(outputs)
  check_outputs(outputs)
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(
      f"images must be uint8 [N, H, W, 3]; got {images.dtype}{images.shape}"
    )
  (graphdef, state), weights = _model(variant)

  @jax.jit
  def run(state, batch):
    model = nnx.merge(graphdef, state)
    out = forward_outputs(model, batch, resolution, outputs)
    return {k: v.astype(FEATURE_DTYPE) for k, v in out.items()}

  key = feature_cache.CacheKey(
    backbone=f"efficientnet_{variant}",
    weights_hash=weights,
    resolution=resolution,
    split=split,
    augment_seed=None,
    inputs_hash=feature_cache.fingerprint(images),
    outputs=",".join(outputs),
  )
  return feature_cache.cached_features(
    key,
    images,
    lambda batch: run(state, batch),
    cache_dir=cache_dir,
    batch_size=batch_size,
    progress=progress,
  )
