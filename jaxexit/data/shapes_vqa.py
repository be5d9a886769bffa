"""Rendered shapes with questions that need spatial detail: `make_shapes_vqa`.

A scene is 1 to `max_objects` small objects on a dark, noisy background.
The image is cut into a `grid x grid` array of cells; each object sits in its
own cell at a random offset inside it, with a shape (square, circle,
triangle, cross) and a flat colour. Objects are `object_scale * image_size`
pixels wide (6 px at 64, 34 px at 336, at least 5 px), so an answer depends
on a few image patches. Each image gets one question, of four types:

  count     "how many red shapes ?", "how many circles ?"  -> "0" .. "M"
  colour    "what colour is the circle ?" (the only circle),
            "what colour is the shape at row 2 column 3 ?"  -> a colour
  relative  "is the red circle left of the blue square ?" (also right of,
            above, below; both objects unique)  -> "yes" / "no"
  exists    "is there a green triangle ?"  -> "yes" / "no"

Rows and columns count from 1 at the top left. "left of" compares columns and
"above" rows; a relative question is only asked of two objects whose cells
differ along that axis.

Balance: the types are spread evenly over the examples and, within a type,
so are the answers (every count 0..M, every colour, yes and no as often):
the generator draws the answer first and builds the scene around it.

Splits: the scene space (which objects, in which cells; offsets, background
and noise aside) is cut into `num_splits` parts by a hash of the scene that
depends on `config.seed`; split `split_seed` keeps only the scenes of part
`split_seed`, so two splits of one config never share a scene (even one-object
scenes, of which there are only `grid**2 * shapes * colours`).

The returned `ShapesScenes` lists every image's objects (cell, pixel box,
shape, colour) and marks those the question is about (`relevant`), so answers
can be recomputed, and kept image patches checked, without the images.

Everything is drawn from `np.random.default_rng([config.seed, split_seed])`:
equal arguments give equal arrays. 10000 examples at 64x64 take about 2 s.

Axes: `B` examples, `M` object slots (`max_objects`), `H`, `W` image height
and width, `Q` question words (padded).
"""

import dataclasses

import numpy as np
from jaxtyping import Bool, Int32

from jaxexit import checks
from jaxexit.data import shapes_render, shapes_sampling
from jaxexit.data.shapes_config import (
  DEFAULT_COLOURS,
  QUESTION_TYPES,
  ShapesVQAConfig,
)
from jaxexit.data.vqa_set import QUESTION_LEN, VQASet
from jaxexit.data.vqa_vocab import VQAVocab

__all__ = [
  "DEFAULT_COLOURS",
  "QUESTION_TYPES",
  "ShapesScenes",
  "ShapesVQAConfig",
  "make_shapes_vqa",
]

# Background RGB channels are drawn from [0, BACKGROUND_MAX).
BACKGROUND_MAX = 48
# Images are rendered and noised this many at a time (bounds the memory of
# the int16 noise).
_CHUNK = 1024


_ARRAY_FIELDS = (
  "valid",
  "relevant",
  "row",
  "col",
  "shape",
  "colour",
  "top",
  "left",
)


@dataclasses.dataclass(frozen=True)
class ShapesScenes:
  """The objects of each image; slots past an image's objects hold -1.

  Attributes:
    valid: [B, M] which slots hold an object.
    relevant: [B, M] the objects the question is about: those counted, the
      one whose colour is asked, the two compared, or those that make "is
      there" true (e.g. to check which image patches a model keeps).
    row: [B, M] grid row of each object, 0 at the top.
    col: [B, M] grid column of each object, 0 at the left.
    shape: [B, M] positions in `shape_names`.
    colour: [B, M] positions in `colour_names`.
    top: [B, M] image row of each object's top-left pixel.
    left: [B, M] image column of each object's top-left pixel.
    shape_names: the config's shapes.
    colour_names: the config's colours.
    object_size: side of every object's box in pixels.
  """

  valid: Bool[np.ndarray, "B M"]
  relevant: Bool[np.ndarray, "B M"]
  row: Int32[np.ndarray, "B M"]
  col: Int32[np.ndarray, "B M"]
  shape: Int32[np.ndarray, "B M"]
  colour: Int32[np.ndarray, "B M"]
  top: Int32[np.ndarray, "B M"]
  left: Int32[np.ndarray, "B M"]
  shape_names: tuple[str, ...]
  colour_names: tuple[str, ...]
  object_size: int

  def __len__(self) -> int:
    return len(self.valid)

  def take(self, idx) -> "ShapesScenes":
    """The scenes at `idx` (anything that indexes a numpy array)."""
    arrays = {f: getattr(self, f)[idx] for f in _ARRAY_FIELDS}
    return ShapesScenes(
      **arrays,
      shape_names=self.shape_names,
      colour_names=self.colour_names,
      object_size=self.object_size,
    )

  def objects(self, i: int) -> list[dict]:
    """The objects of image `i`: dicts of shape, colour (names), row, col
    (0-based cell), top, left (pixels) and relevant."""
    return [
      {
        "shape": self.shape_names[self.shape[i, j]],
        "colour": self.colour_names[self.colour[i, j]],
        "row": int(self.row[i, j]),
        "col": int(self.col[i, j]),
        "top": int(self.top[i, j]),
        "left": int(self.left[i, j]),
        "relevant": bool(self.relevant[i, j]),
      }
      for j in np.flatnonzero(self.valid[i])
    ]


def _pixel_offsets(
  rng: np.random.Generator,
  config: ShapesVQAConfig,
  row: np.ndarray,
  col: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
  """Top-left pixels of objects placed uniformly inside their cells."""
  edges = (np.arange(config.grid + 1) * config.image_size) // config.grid
  k = config.object_size

  def offset(cell):
    cell = np.maximum(cell, 0)  # empty slots (-1) are masked by the caller
    start, room = edges[cell], edges[cell + 1] - edges[cell] - k + 1
    return start + np.floor(rng.random(cell.shape) * room).astype(np.int64)

  return offset(row).astype(np.int32), offset(col).astype(np.int32)


def _render(
  rng: np.random.Generator, config: ShapesVQAConfig, scenes: ShapesScenes
) -> np.ndarray:
  """Renders and noises the scenes, `_CHUNK` images at a time."""
  size = config.image_size
  images = np.empty((len(scenes), size, size, 3), np.uint8)
  background = rng.integers(0, BACKGROUND_MAX, (len(scenes), 3), np.uint8)
  for start in range(0, len(scenes), _CHUNK):
    part = slice(start, start + _CHUNK)
    s = scenes.take(part)
    clean = shapes_render.render_scenes(
      s.valid,
      s.shape,
      s.colour,
      s.top,
      s.left,
      background[part],
      image_size=size,
      object_size=config.object_size,
      shape_names=config.shapes,
      colour_names=config.colours,
    )
    if config.noise:
      noise = rng.integers(
        -config.noise, config.noise + 1, clean.shape, np.int16
      )
      clean = np.clip(clean + noise, 0, 255).astype(np.uint8)
    images[part] = clean
  return images


def make_shapes_vqa(
  config: ShapesVQAConfig, num_examples: int, split_seed: int
) -> VQASet:
  """Draws one split of rendered scenes with one question each.

  Memory: the images take `num_examples * image_size**2 * 3` bytes (3.4 GB
  for 10000 images at 336).

  Args:
    config: what to draw.
    num_examples: number of examples `B` (>= 1).
    split_seed: which part of the scene space, in [0, config.num_splits);
      splits of one config with different `split_seed` share no scene
      (the parts depend on `config.seed`).

  Returns:
    A `VQASet` whose `scenes` is a `ShapesScenes` (the objects of every
    image) and whose `type_names` are `config.question_types`.

  Raises:
    ValueError: `num_examples` < 1 or `split_seed` outside
      [0, config.num_splits).
  """
  checks.positive_int("num_examples", num_examples)
  checks.positive_int("split_seed", split_seed, minimum=0)
  if split_seed >= config.num_splits:
    raise ValueError(
      f"split_seed must lie in [0, {config.num_splits}) for "
      f"num_splits={config.num_splits}; got "
      f"split_seed={split_seed}"
    )
  rng = np.random.default_rng([config.seed, split_seed])
  drawn = shapes_sampling.sample_split(rng, config, num_examples, split_seed)
  top, left = _pixel_offsets(rng, config, drawn.row, drawn.col)
  scenes = ShapesScenes(
    drawn.valid,
    shapes_sampling.relevant_objects(config, drawn),
    drawn.row,
    drawn.col,
    drawn.shape,
    drawn.colour,
    np.where(drawn.valid, top, -1),
    np.where(drawn.valid, left, -1),
    config.shapes,
    config.colours,
    config.object_size,
  )
  images = _render(rng, config, scenes)
  vocab = VQAVocab()
  questions, answers = shapes_sampling.question_words(config, drawn)
  question_ids, question_lens = vocab.encode_padded(questions, QUESTION_LEN)
  return VQASet(
    images,
    question_ids,
    question_lens,
    vocab.encode(answers),
    drawn.qtype.astype(np.int32),
    config.question_types,
    vocab,
    scenes,
  )
