"""Drawing the objects of `jaxexit.data.shapes_vqa` scenes into uint8 images.

An object is a `k x k` binary mask (`shape_mask`) painted in one flat colour
(`PALETTE`) with its top-left corner at a pixel position. `render_scenes`
paints every object of a batch with fancy indexing, one assignment per
shape; `render_scenes_reference` does the same with plain loops over
examples, objects and pixels (the oracle of the tests).

Axes: `B` examples, `M` object slots of a scene, `H`, `W` image height and
width, `P` pixels of a mask.
"""

import numpy as np
from jaxtyping import Bool, Int32, UInt8

from jaxexit import checks
from jaxexit.data import vqa_vocab

# Flat RGB colours, bright and saturated so that they stand out from the dark
# background of `shapes_vqa` and from each other.
PALETTE = {
  "red": (230, 40, 40),
  "green": (40, 200, 60),
  "blue": (50, 90, 240),
  "yellow": (240, 220, 40),
  "magenta": (220, 50, 220),
  "cyan": (40, 220, 230),
  "white": (245, 245, 245),
  "orange": (250, 140, 20),
}
# Below 5 pixels a circle cannot be told from a square.
MIN_OBJECT_SIZE = 5


def shape_mask(shape: str, size: int) -> Bool[np.ndarray, "k k"]:
  """The pixels of one shape in a `size x size` box.

  Pixel (y, x) is tested at its centre (y + 0.5, x + 0.5): a square fills the
  box, a circle is the inscribed disc, a triangle points up with its base on
  the bottom row, and a cross is a centred plus sign with bars about a third
  of the box wide.

  Args:
    shape: one of `vqa_vocab.SHAPES`.
    size: side of the box in pixels, >= `MIN_OBJECT_SIZE`.

  Returns:
    [size, size] boolean mask.

  Raises:
    ValueError: unknown shape or a size below `MIN_OBJECT_SIZE`.
  """
  checks.one_of("shape", shape, vqa_vocab.SHAPES)
  checks.positive_int("size", size, minimum=MIN_OBJECT_SIZE)
  centre = np.arange(size) + 0.5 - size / 2  # [k], pixel centre - box centre
  y, x = centre[:, None], centre[None, :]  # [k, 1], [1, k]
  if shape == "square":
    return np.ones((size, size), bool)
  if shape == "circle":
    return y**2 + x**2 <= (size / 2) ** 2
  if shape == "triangle":
    # Half-width grows linearly from 0 at the top edge to size/2 at the
    # bottom, taken at each row's lower edge so that the top row is not empty.
    return np.abs(x) <= (y + 0.5 + size / 2) / 2
  # A bar of the box's parity is symmetric about the centre; "<" keeps it
  # exactly `bar` pixels wide.
  bar = round(size / 3)
  bar = max(1, bar - (size - bar) % 2)
  return (np.abs(y) < bar / 2) | (np.abs(x) < bar / 2)


def _check_scene_arrays(valid, shape, colour, top, left) -> None:
  checks.same_shape(
    ("valid", "shape", "colour", "top", "left"), valid, shape, colour, top, left
  )


def render_scenes(
  valid: Bool[np.ndarray, "B M"],
  shape: Int32[np.ndarray, "B M"],
  colour: Int32[np.ndarray, "B M"],
  top: Int32[np.ndarray, "B M"],
  left: Int32[np.ndarray, "B M"],
  background: UInt8[np.ndarray, "B 3"],
  *,
  image_size: int,
  object_size: int,
  shape_names: tuple[str, ...],
  colour_names: tuple[str, ...],
) -> UInt8[np.ndarray, "B H W 3"]:
  """Paints the objects of a batch of scenes onto flat backgrounds.

  Objects must not overlap (later slots would paint over earlier ones) and
  must lie inside the image.

  Args:
    valid: [B, M] which object slots hold an object.
    shape: [B, M] positions in `shape_names` (ignored where not valid).
    colour: [B, M] positions in `colour_names` (ignored where not valid).
    top: [B, M] row of each object's top-left pixel.
    left: [B, M] column of each object's top-left pixel.
    background: [B, 3] RGB colour of each image's background.
    image_size: `H = W` of the images.
    object_size: side `k` of every object's box.
    shape_names: names of the shapes (`vqa_vocab.SHAPES`).
    colour_names: names of the colours (keys of `PALETTE`).

  Returns:
    [B, H, W, 3] uint8 images.
  """
  _check_scene_arrays(valid, shape, colour, top, left)
  batch = len(valid)
  palette = np.asarray([PALETTE[c] for c in colour_names], np.uint8)
  images = np.empty((batch, image_size, image_size, 3), np.uint8)
  images[:] = background[:, None, None, :]
  for s, name in enumerate(shape_names):
    dy, dx = np.nonzero(shape_mask(name, object_size))  # [P], [P]
    b, j = np.nonzero(valid & (shape == s))  # [O], [O]
    rows = top[b, j][:, None] + dy  # [O, P]
    cols = left[b, j][:, None] + dx  # [O, P]
    images[b[:, None], rows, cols] = palette[colour[b, j]][:, None, :]
  return images


def render_scenes_reference(
  valid,
  shape,
  colour,
  top,
  left,
  background,
  *,
  image_size: int,
  object_size: int,
  shape_names: tuple[str, ...],
  colour_names: tuple[str, ...],
) -> np.ndarray:
  """`render_scenes` with loops over examples, objects and pixels."""
  _check_scene_arrays(valid, shape, colour, top, left)
  images = np.zeros((len(valid), image_size, image_size, 3), np.uint8)
  for b in range(len(valid)):
    images[b, :, :] = background[b]
    for j in range(valid.shape[1]):
      if not valid[b, j]:
        continue
      mask = shape_mask(shape_names[shape[b, j]], object_size)
      rgb = PALETTE[colour_names[colour[b, j]]]
      for y in range(object_size):
        for x in range(object_size):
          if mask[y, x]:
            images[b, top[b, j] + y, left[b, j] + x] = rgb
  return images
