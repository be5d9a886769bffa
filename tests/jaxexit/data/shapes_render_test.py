"""Tests for jaxexit.data.shapes_render: shape masks and scene painting."""

import itertools

import numpy as np
import pytest

from jaxexit.data import shapes_render
from jaxexit.data.vqa_vocab import SHAPES


@pytest.mark.parametrize("size", [5, 6, 7, 11, 34])
def test_masks_are_distinct_and_symmetric(size):
  masks = {s: shapes_render.shape_mask(s, size) for s in SHAPES}
  for a, b in itertools.combinations(SHAPES, 2):
    assert np.any(masks[a] != masks[b]), (a, b)
  assert masks["square"].all()
  for name, mask in masks.items():
    assert mask.shape == (size, size) and mask.dtype == bool
    np.testing.assert_array_equal(mask, mask[:, ::-1], err_msg=name)
    assert mask[-1].any() and mask[:, 0].any(), name  # fills its box
  for name in ("circle", "cross"):
    np.testing.assert_array_equal(masks[name], masks[name].T, err_msg=name)
  width = masks["triangle"].sum(axis=1)
  assert np.all(np.diff(width) >= 0) and width[0] < width[-1] == size


def test_every_size_keeps_the_shapes_apart():
  for size in range(shapes_render.MIN_OBJECT_SIZE, 60):
    masks = [shapes_render.shape_mask(s, size).tobytes() for s in SHAPES]
    assert len(set(masks)) == len(SHAPES), size


def test_mask_errors():
  with pytest.raises(ValueError, match="size=4"):
    shapes_render.shape_mask("circle", 4)
  with pytest.raises(ValueError, match="shape='hexagon'"):
    shapes_render.shape_mask("hexagon", 8)


def _random_scenes(rng, batch, slots, image_size, object_size, grid):
  """Objects in distinct cells of a grid, at random offsets inside them."""
  cell = image_size // grid
  cells = np.argsort(rng.random((batch, grid * grid)), axis=1)[:, :slots]
  jitter = rng.integers(0, cell - object_size + 1, (2, batch, slots))
  top = (cells // grid * cell + jitter[0]).astype(np.int32)
  left = (cells % grid * cell + jitter[1]).astype(np.int32)
  valid = rng.random((batch, slots)) < 0.7
  shape = rng.integers(0, len(SHAPES), (batch, slots)).astype(np.int32)
  colour = rng.integers(0, 8, (batch, slots)).astype(np.int32)
  background = rng.integers(0, 256, (batch, 3)).astype(np.uint8)
  return valid, shape, colour, top, left, background


@pytest.mark.parametrize(
  "image_size,object_size,grid", [(32, 5, 4), (64, 6, 4), (60, 13, 3)]
)
def test_render_matches_reference(image_size, object_size, grid):
  rng = np.random.default_rng(image_size)
  arrays = _random_scenes(rng, 6, 5, image_size, object_size, grid)
  kw = dict(
    image_size=image_size,
    object_size=object_size,
    shape_names=SHAPES,
    colour_names=tuple(shapes_render.PALETTE),
  )
  fast = shapes_render.render_scenes(*arrays, **kw)
  ref = shapes_render.render_scenes_reference(*arrays, **kw)
  assert fast.dtype == np.uint8
  assert fast.shape == (6, image_size, image_size, 3)
  np.testing.assert_array_equal(fast, ref)
  # Only the valid objects' pixels differ from the background.
  painted = np.any(fast != arrays[-1][:, None, None, :], axis=-1)
  masks = [shapes_render.shape_mask(s, object_size) for s in SHAPES]
  valid, shape = arrays[0], arrays[1]
  expected = sum(masks[shape[b, j]].sum() for b, j in zip(*np.nonzero(valid)))
  assert painted.sum() == expected


def test_palette_colours_are_far_apart():
  rgb = np.asarray(list(shapes_render.PALETTE.values()), float)
  dist = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)
  assert dist[~np.eye(len(rgb), dtype=bool)].min() > 80
  assert rgb.sum(axis=1).min() > 3 * 48  # brighter than any background
