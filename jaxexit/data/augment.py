"""Image augmentation and preprocessing in jax.numpy, for use inside `jit`.

The CIFAR training recipe of torchvision-based papers (JEI-DNN, Dynamic
Perceiver; see encoder_exits.md §8-9) is
`RandomCrop(size, padding)` with zero fill, `RandomHorizontalFlip()`, then
`Normalize(mean, std)`. Here that is `random_crop_flip` on uint8 images (so
the padding is black, as with torchvision's PIL images) followed by
`normalize`; `resize` comes first for models trained at a larger size.

Every function is pure and traceable: randomness comes only from `key`, and
Python arguments (`padding`, `flip`, `size`) are static.

Axes: `B` examples, `H`, `W` image height and width (here not "heads"), `C`
image channels (here not "classes").
"""

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float32, PRNGKeyArray, Shaped, UInt8

from jaxexit import checks

# Per-channel RGB mean and standard deviation of the CIFAR-10 training images
# on the 0-1 scale (over all 50000 x 32 x 32 pixels).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

_Images = Shaped[Array | np.ndarray, "B H W C"]


def _check_rank4(images) -> None:
  if np.ndim(images) != 4:
    raise ValueError(
      f"images must have 4 dims laid out as [B, H, W, C]; got "
      f"shape {np.shape(images)}"
    )


def normalize(
  images: UInt8[Array | np.ndarray, "B H W C"],
  mean: tuple[float, ...] = CIFAR10_MEAN,
  std: tuple[float, ...] = CIFAR10_STD,
) -> Float32[Array, "B H W C"]:
  """Scales uint8 pixels to [0, 1], then standardises each channel.

  Args:
    images: [B, H, W, C] uint8 images.
    mean: [C] channel means on the 0-1 scale.
    std: [C] channel standard deviations on the 0-1 scale (positive).

  Returns:
    [B, H, W, C] float32 `(images / 255 - mean) / std`.

  Raises:
    ValueError: images not rank 4 or not uint8, `mean`/`std` not of length C,
      or a non-positive `std`.
  """
  _check_rank4(images)
  if images.dtype != jnp.uint8:
    raise ValueError(f"images must be uint8 (0-255); got dtype={images.dtype}")
  channels = images.shape[-1]
  if len(mean) != channels or len(std) != channels:
    raise ValueError(
      f"mean and std need {channels} values for images "
      f"{images.shape}; got mean={mean}, std={std}"
    )
  checks.in_range("std", std, 0.0, np.inf, low_open=True, high_open=True)
  mean_c = jnp.asarray(mean, jnp.float32).reshape(1, 1, 1, channels)
  std_c = jnp.asarray(std, jnp.float32).reshape(1, 1, 1, channels)
  return (jnp.asarray(images, jnp.float32) / 255.0 - mean_c) / std_c


def random_crop_flip(
  key: PRNGKeyArray, images: _Images, *, padding: int = 4, flip: bool = True
) -> Shaped[Array, "B H W C"]:
  """Per-example random crop of the zero-padded image, and horizontal flip.

  Each image is padded with `padding` zeros on every side, an `H x W` window
  at an offset drawn uniformly from `[0, 2 * padding]^2` is cut out (a
  translation by up to `padding` pixels), and with probability 1/2 it is
  mirrored left-right. Offsets and flips are independent across examples.

  Args:
    key: PRNG key; equal keys give equal outputs.
    images: [B, H, W, C] images (any dtype; apply before `normalize` so that
      the padding is black, as in torchvision's recipe).
    padding: pixels of zero padding per side (0: no crop).
    flip: whether to flip at random.

  Returns:
    [B, H, W, C] augmented images, of the dtype of `images`.

  Raises:
    ValueError: `images` not rank 4, or `padding` negative or not an int.
  """
  _check_rank4(images)
  checks.positive_int("padding", padding, minimum=0)
  batch, height, width, channels = images.shape
  key_crop, key_flip = jax.random.split(key)
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  padded = jnp.pad(jnp.asarray(images), pad)  # [B, H + 2p, W + 2p, C]
  offsets = jax.random.randint(key_crop, (batch, 2), 0, 2 * padding + 1)

  def crop(image, offset):
    start = (offset[0], offset[1], 0)
    return jax.lax.dynamic_slice(image, start, (height, width, channels))

  out = jax.vmap(crop)(padded, offsets)  # [B, H, W, C]
  if not flip:
    return out
  mirror = jax.random.bernoulli(key_flip, 0.5, (batch,))
  return jnp.where(mirror.reshape(batch, 1, 1, 1), out[:, :, ::-1, :], out)


def resize(images: _Images, size: int) -> Shaped[Array, "B Hs Ws C"]:
  """Bilinear resize to `size x size` (antialiased when shrinking).

  Args:
    images: [B, H, W, C] images.
    size: output height and width.

  Returns:
    [B, size, size, C] images of the dtype of `images`; integer images are
    resized in float32, then rounded and clipped to their dtype's range.

  Raises:
    ValueError: `images` not rank 4, or `size` not a positive int.
  """
  _check_rank4(images)
  checks.positive_int("size", size)
  images = jnp.asarray(images)
  batch, _, _, channels = images.shape
  out = jax.image.resize(
    images.astype(jnp.float32), (batch, size, size, channels), "bilinear"
  )
  if jnp.issubdtype(images.dtype, jnp.integer):
    info = jnp.iinfo(images.dtype)
    out = jnp.clip(jnp.round(out), info.min, info.max)
  return out.astype(images.dtype)
