"""Tests for jaxexit.data.shapes_vqa: rendered shapes with balanced questions.

Answers are recomputed from the returned object lists by an oracle that only
reads the question words, and the object lists are checked against the
pixels, so a wrong scene, question or image all fail.
"""

import dataclasses
from collections import Counter

import numpy as np
import pytest

from jaxexit.data import shapes_render, shapes_sampling, shapes_vqa
from jaxexit.data.shapes_vqa import ShapesVQAConfig, make_shapes_vqa
from jaxexit.data.vqa_set import QUESTION_LEN
from jaxexit.data.vqa_vocab import PLURALS

SINGULAR = {p: s for s, p in PLURALS.items()}
RELATIONS = {
  "left": ("col", -1),
  "right": ("col", 1),
  "above": ("row", -1),
  "below": ("row", 1),
}


def _unique(objects, colour, shape):
  found = [o for o in objects if (o["colour"], o["shape"]) == (colour, shape)]
  assert len(found) == 1, (colour, shape, objects)
  return found[0]


def _oracle(words, objects):
  """(type, answer, objects the question is about) from words and objects."""
  assert words[-1] == "?"
  if words[:2] == ["how", "many"]:
    w = words[2]
    if w in SINGULAR:
      chosen = [o for o in objects if o["shape"] == SINGULAR[w]]
    else:
      assert words[3] == "shapes"
      chosen = [o for o in objects if o["colour"] == w]
    return "count", str(len(chosen)), chosen
  if words[:4] == ["what", "colour", "is", "the"]:
    if words[4] == "shape":
      assert words[5:7] == ["at", "row"] and words[8] == "column"
      cell = (int(words[7]) - 1, int(words[9]) - 1)
      chosen = [o for o in objects if (o["row"], o["col"]) == cell]
    else:
      chosen = [o for o in objects if o["shape"] == words[4]]
    assert len(chosen) == 1, (words, objects)
    return "colour", chosen[0]["colour"], chosen
  if words[:2] == ["is", "there"]:
    assert words[2] == ("an" if words[3][0] in "aeiou" else "a")
    chosen = [
      o for o in objects if (o["colour"], o["shape"]) == (words[3], words[4])
    ]
    return "exists", "yes" if chosen else "no", chosen
  assert words[:2] == ["is", "the"]
  a, b = _unique(objects, *words[2:4]), _unique(objects, *words[-3:-1])
  assert a is not b
  axis, sign = RELATIONS[words[4]]
  assert a[axis] != b[axis]  # only asked when the cells differ on that axis
  holds = np.sign(a[axis] - b[axis]) == sign
  return "relative", "yes" if holds else "no", [a, b]


@pytest.fixture(scope="module")
def default_set():
  return make_shapes_vqa(ShapesVQAConfig(), 2000, 0)


def test_answers_match_the_scenes(default_set):
  data = default_set
  for i in range(len(data)):
    objects = data.scenes.objects(i)
    kind, answer, chosen = _oracle(data.question(i), objects)
    assert kind == data.type_name(i)
    assert answer == data.answer(i), (data.question(i), objects)
    assert [o for o in objects if o["relevant"]] == chosen


def test_arrays_and_sizes(default_set):
  data = default_set
  assert data.images.shape == (2000, 64, 64, 3)
  assert data.images.dtype == np.uint8
  assert data.question_ids.shape == (2000, QUESTION_LEN)
  for name in ("question_ids", "question_lens", "answer_ids", "question_types"):
    assert getattr(data, name).dtype == np.int32, name
  assert data.type_names == shapes_vqa.QUESTION_TYPES
  counts = data.scenes.valid.sum(axis=1)
  assert counts.min() == 1 and counts.max() == 6
  assert data.scenes.object_size == 6


def test_answers_are_balanced_within_each_type(default_set):
  data, config = default_set, ShapesVQAConfig()
  types = Counter(data.type_name(i) for i in range(len(data)))
  assert set(types.values()) == {500}
  for name in config.question_types:
    got = Counter(
      data.answer(i) for i in range(len(data)) if data.type_name(i) == name
    )
    assert set(got) == set(config.answers(name)), name
    assert max(got.values()) - min(got.values()) <= 1, (name, got)


def _pixels_match_objects(data, noise):
  """Object pixels have their colour and nothing else leaves the background
  (up to the noise amplitude)."""
  scenes, k = data.scenes, data.scenes.object_size
  for i in range(len(data)):
    image = data.images[i].astype(int)
    painted = np.zeros(image.shape[:2], bool)
    for o in scenes.objects(i):
      mask = shapes_render.shape_mask(o["shape"], k)
      box = image[o["top"] : o["top"] + k, o["left"] : o["left"] + k]
      assert box.shape[:2] == (k, k)
      rgb = np.asarray(shapes_render.PALETTE[o["colour"]])
      assert np.abs(box[mask] - rgb).max() <= noise, (i, o)
      painted[o["top"] : o["top"] + k, o["left"] : o["left"] + k] |= mask
    background = image[~painted]
    assert np.ptp(background, axis=0).max() <= 2 * noise, i
    assert background.max() < shapes_vqa.BACKGROUND_MAX + noise


@pytest.mark.parametrize(
  "image_size,object_size", [(32, 5), (64, 6), (336, 34)]
)
def test_images_show_the_objects(image_size, object_size):
  config = ShapesVQAConfig(image_size=image_size, noise=0)
  data = make_shapes_vqa(config, 12, 1)
  assert data.images.shape == (12, image_size, image_size, 3)
  assert data.scenes.object_size == object_size
  _pixels_match_objects(data, noise=0)
  # Every object lies inside its grid cell.
  edges = np.arange(config.grid + 1) * image_size // config.grid
  s = data.scenes
  for top, row in ((s.top, s.row), (s.left, s.col)):
    inside = (top >= edges[row]) & (top + object_size <= edges[row + 1])
    assert np.all(inside[s.valid])


def test_noise_stays_within_its_amplitude():
  data = make_shapes_vqa(ShapesVQAConfig(noise=5), 20, 0)
  _pixels_match_objects(data, noise=5)


def test_same_seed_same_set_other_seed_other_set():
  config = ShapesVQAConfig(image_size=32)
  a, b = make_shapes_vqa(config, 50, 0), make_shapes_vqa(config, 50, 0)
  for f in dataclasses.fields(a):
    if f.name not in ("vocab", "scenes", "type_names"):
      np.testing.assert_array_equal(getattr(a, f.name), getattr(b, f.name))
  for f in (
    "valid",
    "relevant",
    "row",
    "col",
    "shape",
    "colour",
    "top",
    "left",
  ):
    np.testing.assert_array_equal(getattr(a.scenes, f), getattr(b.scenes, f))
  c = make_shapes_vqa(config, 50, 1)
  d = make_shapes_vqa(dataclasses.replace(config, seed=1), 50, 0)
  for other in (c, d):
    assert not np.array_equal(a.images, other.images)
    assert not np.array_equal(a.question_ids, other.question_ids)


def _layouts(data):
  s = data.scenes
  return {
    frozenset(
      (o["row"], o["col"], o["shape"], o["colour"]) for o in s.objects(i)
    )
    for i in range(len(data))
  }


def test_splits_share_no_scene():
  config = ShapesVQAConfig(image_size=32, noise=0)
  layouts = [_layouts(make_shapes_vqa(config, 3000, s)) for s in range(3)]
  one_object = [{x for x in lay if len(x) == 1} for lay in layouts]
  # One-object layouts are few (16 cells * 4 shapes * 7 colours = 448), so
  # without the split hash the parts would overlap heavily.
  assert all(len(x) > 50 for x in one_object)
  for a in range(3):
    for b in range(a + 1, 3):
      assert not layouts[a] & layouts[b], (a, b)


def test_subset_config():
  config = ShapesVQAConfig(
    image_size=48,
    grid=3,
    max_objects=3,
    shapes=("circle", "cross"),
    colours=("orange", "blue"),
    question_types=("exists", "relative"),
    num_splits=1,
    seed=4,
  )
  data = make_shapes_vqa(config, 101, 0)
  assert data.type_names == ("exists", "relative")
  for i in range(len(data)):
    objects = data.scenes.objects(i)
    assert {o["shape"] for o in objects} <= {"circle", "cross"}
    assert {o["colour"] for o in objects} <= {"orange", "blue"}
    _, answer, _ = _oracle(data.question(i), objects)
    assert answer == data.answer(i)
  assert config.answers("exists") == ("yes", "no")


def test_ten_thousand_examples():
  """A 10,000-example split: its layouts and questions are drawn for every
  example (what depends on the count). Pixels are drawn per image, so 100
  rendered examples check the images (10,000 would take 123 MB)."""
  config = ShapesVQAConfig()
  drawn = shapes_sampling.sample_split(
    np.random.default_rng(0), config, 10_000, 2
  )
  assert drawn.valid.shape[0] == drawn.qtype.shape[0] == 10_000
  assert len(np.unique(drawn.qtype)) == 4
  questions, answers = shapes_sampling.question_words(config, drawn)
  assert len(questions) == len(answers) == 10_000
  data = make_shapes_vqa(config, 100, 2)
  assert len(data) == 100 and data.images.shape[1:] == (64, 64, 3)
  assert len(np.unique(data.question_types)) == 4


@pytest.mark.parametrize(
  "kw,match",
  [
    ({"image_size": 16}, "image_size=16 is too small for grid=4"),
    ({"image_size": 40, "grid": 9}, "too small for grid=9"),
    ({"colours": ("red", "purple")}, r"unknown colours \['purple'\]"),
    ({"shapes": ("circle", "hexagon")}, r"unknown shapes \['hexagon'\]"),
    ({"shapes": ("circle",)}, "at least 2 distinct"),
    ({"colours": ("red", "red")}, "at least 2 distinct"),
    ({"question_types": ("count", "why")}, r"\['why'\]"),
    ({"grid": 1}, "grid=1"),
    ({"grid": 10}, "grid=10"),
    ({"grid": 2, "max_objects": 5}, "max_objects=5"),
    ({"max_objects": 1}, "max_objects=1"),
    ({"object_scale": 0.0}, "object_scale=0.0"),
    ({"noise": 200}, "noise=200"),
    ({"num_splits": 0}, "num_splits=0"),
    ({"seed": -1}, "seed=-1"),
  ],
)
def test_bad_config(kw, match):
  with pytest.raises(ValueError, match=match):
    ShapesVQAConfig(**kw)


def test_bad_arguments():
  config = ShapesVQAConfig(image_size=32)
  with pytest.raises(ValueError, match="num_examples=0"):
    make_shapes_vqa(config, 0, 0)
  with pytest.raises(ValueError, match="split_seed=3"):
    make_shapes_vqa(config, 4, 3)
  with pytest.raises(ValueError, match="split_seed=-1"):
    make_shapes_vqa(config, 4, -1)
  with pytest.raises(ValueError, match="question_type='count'"):
    ShapesVQAConfig(question_types=("exists",)).answers("count")
