"""`ShapesVQAConfig`: what `jaxexit.data.shapes_vqa` draws, and its checks."""

import dataclasses

from jaxexit import checks
from jaxexit.data import shapes_render, vqa_vocab
from jaxexit.data.vqa_vocab import NO, YES

QUESTION_TYPES = ("count", "colour", "relative", "exists")
DEFAULT_COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan", "white")


def _check_names(
  name: str, values: tuple[str, ...], known: tuple[str, ...], minimum: int
) -> None:
  unknown = [v for v in values if v not in known]
  if unknown:
    raise ValueError(
      f"unknown {name} {unknown}; expected some of {list(known)}"
    )
  if len(set(values)) != len(values) or len(values) < minimum:
    raise ValueError(
      f"{name} must hold at least {minimum} distinct names; "
      f"got {name}={values!r}"
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShapesVQAConfig:
  """What scenes and questions `make_shapes_vqa` draws.

  Attributes:
    image_size: side `H = W` of the images in pixels.
    grid: cells per side, in [2, 9]; rows and columns are named 1..grid.
    max_objects: most objects in a scene, in [2, min(grid**2, 9)].
    shapes: the shapes used, a subset of `vqa_vocab.SHAPES` (at least 2).
    colours: the colours used, keys of `shapes_render.PALETTE` (at least 2).
    question_types: the question types asked, from `QUESTION_TYPES`.
    object_scale: object side over image side (with a floor of
      `shapes_render.MIN_OBJECT_SIZE` pixels).
    noise: amplitude of the uniform integer noise added to every pixel
      (0: none), in [0, 127].
    num_splits: number of disjoint parts of the scene space (1: no split).
    seed: seed of the whole set (scenes, questions and the split hash).
  """

  image_size: int = 64
  grid: int = 4
  max_objects: int = 6
  shapes: tuple[str, ...] = vqa_vocab.SHAPES
  colours: tuple[str, ...] = DEFAULT_COLOURS
  question_types: tuple[str, ...] = QUESTION_TYPES
  object_scale: float = 0.1
  noise: int = 8
  num_splits: int = 3
  seed: int = 0

  def __post_init__(self):
    checks.positive_int("image_size", self.image_size)
    checks.positive_int("grid", self.grid, minimum=2)
    checks.in_range("grid", self.grid, 2, vqa_vocab.MAX_NUMBER)
    checks.positive_int("max_objects", self.max_objects, minimum=2)
    checks.in_range(
      "max_objects",
      self.max_objects,
      2,
      min(self.grid**2, vqa_vocab.MAX_NUMBER),
    )
    _check_names("shapes", self.shapes, vqa_vocab.SHAPES, 2)
    _check_names("colours", self.colours, tuple(shapes_render.PALETTE), 2)
    _check_names("question_types", self.question_types, QUESTION_TYPES, 1)
    checks.in_range("object_scale", self.object_scale, 0, 1, low_open=True)
    checks.positive_int("noise", self.noise, minimum=0)
    checks.in_range("noise", self.noise, 0, 127)
    checks.positive_int("num_splits", self.num_splits)
    checks.positive_int("seed", self.seed, minimum=0)
    cell = self.image_size // self.grid
    if self.object_size > cell:
      raise ValueError(
        f"image_size={self.image_size} is too small for grid={self.grid}: "
        f"its {cell}-pixel cells cannot hold {self.object_size}-pixel "
        f"objects (need image_size >= {self.grid * self.object_size})"
      )

  @property
  def object_size(self) -> int:
    """Side of every object's box in pixels."""
    return max(
      shapes_render.MIN_OBJECT_SIZE, round(self.object_scale * self.image_size)
    )

  def answers(self, question_type: str) -> tuple[str, ...]:
    """The possible answers of one question type (balanced over)."""
    checks.one_of("question_type", question_type, self.question_types)
    if question_type == "count":
      return vqa_vocab.NUMBERS[: self.max_objects + 1]
    if question_type == "colour":
      return self.colours
    return (YES, NO)
