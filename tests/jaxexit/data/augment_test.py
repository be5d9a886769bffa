"""Tests for jaxexit.data.augment against numpy references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxexit.data import augment
from tests.tiers import slow

B, H, W, C = 64, 5, 6, 2


def _unchecked(fn):
  """`fn` without the test hook's jaxtyping wrapper, whose shape check would
  fire before the library's own ValueError (what users see)."""
  return getattr(fn, "__wrapped__", fn)


def _images(dtype=np.uint8) -> np.ndarray:
  # Values 1..255: never equal to the zero padding, and all distinct per row.
  rng = np.random.default_rng(0)
  return rng.integers(1, 256, (B, H, W, C)).astype(dtype)


def _placements(image, out, padding):
  """(dy, dx, mirrored) of every crop of `image` padded that equals `out`."""
  pad = ((padding, padding), (padding, padding), (0, 0))
  padded = np.pad(image, pad)
  found = []
  for dy in range(2 * padding + 1):
    for dx in range(2 * padding + 1):
      window = padded[dy : dy + H, dx : dx + W]
      for mirrored in (False, True):
        if np.array_equal(window[:, ::-1] if mirrored else window, out):
          found.append((dy, dx, mirrored))
  return found


# ---------------------------------------------------------------- normalize


def test_normalize_matches_numpy():
  images = _images()[:, :, :, :1].repeat(3, axis=-1)
  out = augment.normalize(jnp.asarray(images))
  ref = (images / 255.0 - np.asarray(augment.CIFAR10_MEAN)) / np.asarray(
    augment.CIFAR10_STD
  )
  assert out.dtype == jnp.float32 and out.shape == images.shape
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_normalize_custom_stats_and_numpy_input():
  images = np.full((1, 2, 2, 2), 255, np.uint8)
  out = augment.normalize(images, mean=(0.5, 0.0), std=(0.5, 2.0))
  np.testing.assert_allclose(out[0, 0, 0], [1.0, 0.5])


@pytest.mark.parametrize(
  "kw,match",
  [
    ({"mean": (0.5,)}, "mean and std need 3"),
    ({"std": (1.0, 0.0, 1.0)}, "std"),
  ],
)
def test_normalize_bad_stats(kw, match):
  with pytest.raises(ValueError, match=match):
    augment.normalize(np.zeros((1, 2, 2, 3), np.uint8), **kw)


def test_normalize_bad_images():
  with pytest.raises(ValueError, match="uint8"):
    _unchecked(augment.normalize)(np.zeros((1, 2, 2, 3), np.float32))
  with pytest.raises(ValueError, match=r"shape \(2, 2, 3\)"):
    _unchecked(augment.normalize)(np.zeros((2, 2, 3), np.uint8))


# ---------------------------------------------------------------- crop/flip


@slow
def test_crop_flip_is_a_translation_and_mirror_of_the_padded_image():
  images = _images()
  out = np.asarray(
    augment.random_crop_flip(jax.random.key(0), jnp.asarray(images), padding=2)
  )
  assert out.dtype == np.uint8 and out.shape == images.shape
  placements = []
  for image, crop in zip(images, out):
    found = _placements(image, crop, 2)
    assert len(found) == 1, found
    placements.append(found[0])
  offsets = {(dy, dx) for dy, dx, _ in placements}
  mirrored = [m for _, _, m in placements]
  assert len(offsets) > 10  # per-example offsets, not one for the batch
  assert 0 < sum(mirrored) < B  # per-example flips


def test_crop_flip_same_key_same_output_different_key_differs():
  images = jnp.asarray(_images())
  run = functools.partial(augment.random_crop_flip, images=images)
  a, b = run(jax.random.key(1)), run(jax.random.key(1))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, run(jax.random.key(2)))


def test_crop_without_flip_never_mirrors():
  images = _images(np.float32)
  out = augment.random_crop_flip(
    jax.random.key(3), images, padding=1, flip=False
  )
  assert out.dtype == jnp.float32
  for image, crop in zip(images, np.asarray(out)):
    (found,) = _placements(image, crop, 1)
    assert not found[2]


def test_flip_only_mirrors_or_keeps():
  images = _images()
  out = np.asarray(
    augment.random_crop_flip(jax.random.key(4), images, padding=0)
  )
  mirrored = np.all(out == images[:, :, ::-1], axis=(1, 2, 3))
  kept = np.all(out == images, axis=(1, 2, 3))
  assert np.all(mirrored | kept) and mirrored.any() and kept.any()


def test_no_padding_no_flip_is_identity():
  images = _images()
  out = augment.random_crop_flip(
    jax.random.key(5), images, padding=0, flip=False
  )
  np.testing.assert_array_equal(out, images)


def test_crop_flip_jit_equals_eager():
  images = jnp.asarray(_images())
  key = jax.random.key(6)
  jitted = jax.jit(
    augment.random_crop_flip, static_argnames=("padding", "flip")
  )
  np.testing.assert_array_equal(
    jitted(key, images, padding=3),
    augment.random_crop_flip(key, images, padding=3),
  )


@pytest.mark.parametrize(
  "images,padding,match",
  [
    (np.zeros((2, 4, 4, 3), np.uint8), -1, "padding=-1"),
    (np.zeros((4, 4, 3), np.uint8), 4, r"shape \(4, 4, 3\)"),
  ],
)
def test_crop_flip_errors(images, padding, match):
  with pytest.raises(ValueError, match=match):
    _unchecked(augment.random_crop_flip)(
      jax.random.key(0), images, padding=padding
    )


# ---------------------------------------------------------------- resize


def test_resize_shape_and_dtype():
  images = _images()
  out = augment.resize(images, 12)
  assert out.shape == (B, 12, 12, C) and out.dtype == jnp.uint8
  const = np.full((1, 4, 4, 3), 77, np.uint8)
  np.testing.assert_array_equal(augment.resize(const, 9), 77)


def test_resize_float_matches_jax_image():
  images = jnp.asarray(_images(np.float32))
  np.testing.assert_allclose(
    augment.resize(images, 3),
    jax.image.resize(images, (B, 3, 3, C), "bilinear"),
    rtol=1e-6,
  )


def test_resize_errors():
  with pytest.raises(ValueError, match="size=0"):
    augment.resize(np.zeros((1, 4, 4, 3), np.uint8), 0)
  with pytest.raises(ValueError, match="4 dims"):
    _unchecked(augment.resize)(np.zeros((4, 4, 3), np.uint8), 8)
