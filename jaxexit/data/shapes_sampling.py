"""Scene layouts and questions with balanced answers, for `shapes_vqa`.

`sample_split` first fixes every example's question type and answer (evenly
spread), then draws a scene around that answer: for "how many red shapes ?"
-> "3" it colours exactly three objects red and the others not; for a
relative question it puts the two named objects in cells that differ along
the relation's axis and swaps them when the relation disagrees with the
answer; it makes the named objects unique where the question needs it.
Everything is vectorised over candidates.

Splits: a scene's layout (cell, shape and colour of every object) is hashed
(SplitMix64 over the sorted object codes, seeded by `config.seed`) into one
of `num_splits` parts; candidates outside the wanted part are rejected and
redrawn, so the accepted scenes follow the same conditional distribution.

Axes: `B` examples (candidates while drawing), `M` object slots, `G2` grid
cells.
"""

import dataclasses

import numpy as np
from jaxtyping import Bool, Int32, Int64

from jaxexit.data.shapes_config import ShapesVQAConfig
from jaxexit.data.vqa_vocab import PLURALS, article

RELATIONS = (("left", "of"), ("right", "of"), ("above",), ("below",))
# Each round draws this many candidates per missing example and part.
_CANDIDATES_PER_PART = 4
_MAX_ROUNDS = 100


@dataclasses.dataclass(frozen=True)
class Drawn:
  """Layouts and question parameters of a split (no pixels yet).

  Attributes:
    valid: [B, M] which slots hold an object (slot 0 always does).
    row, col: [B, M] grid cell of each object, -1 where not valid.
    shape, colour: [B, M] positions in the config's shapes / colours.
    qtype: [B] position in `config.question_types`.
    target: [B] position of the answer in `config.answers(type)`.
    variant: [B] count: 0 by colour, 1 by shape; colour: 0 of the unique
      shape, 1 of the shape in slot 0's cell; relative: index in `RELATIONS`.
    attrs: [B, 4] (colour, shape) of the first and second object that the
      question names, -1 where it names none.
  """

  valid: Bool[np.ndarray, "B M"]
  row: Int32[np.ndarray, "B M"]
  col: Int32[np.ndarray, "B M"]
  shape: Int32[np.ndarray, "B M"]
  colour: Int32[np.ndarray, "B M"]
  qtype: Int64[np.ndarray, "B"]
  target: Int64[np.ndarray, "B"]
  variant: Int64[np.ndarray, "B"]
  attrs: Int64[np.ndarray, "B 4"]


def _uniform_int(rng, low, high, shape=None):
  """Uniform integers in [low, high] (inclusive; arrays broadcast)."""
  shape = np.broadcast(low, high).shape if shape is None else shape
  return low + np.floor(rng.random(shape) * (high - low + 1)).astype(np.int64)


def _other(rng, value, n):
  """Uniform over range(n) without `value`, elementwise (n may vary)."""
  value = np.asarray(value)
  return (value + _uniform_int(rng, 1, np.asarray(n) - 1, value.shape)) % n


def _other_pair(rng, a, b, n):
  """Uniform over range(n) without `a` and `b` (which may be equal)."""
  a, b = np.broadcast_arrays(a, b)
  lo, hi = np.minimum(a, b), np.maximum(a, b)
  two = a != b
  r = _uniform_int(rng, 0, n - 2 - two)
  r = r + (r >= lo)
  return r + (two & (r >= hi))


def _count(rng, config, target, c):
  """Exactly `target` objects have the asked colour (or shape)."""
  n, slots = len(target), np.arange(config.max_objects)
  nc, ns = len(config.colours), len(config.shapes)
  c["n_obj"] = _uniform_int(rng, np.maximum(target, 1), config.max_objects)
  by_shape = rng.integers(0, 2, n).astype(bool)
  num = np.where(by_shape, ns, nc)[:, None]  # [B, 1]
  val = _uniform_int(rng, 0, num[:, 0] - 1)
  has = slots < target[:, None]  # [B, M]
  attr = np.where(
    has,
    val[:, None],
    _other(rng, np.broadcast_to(val[:, None], has.shape), num),
  )
  c["shape"] = np.where(by_shape[:, None], attr, c["shape"])
  c["colour"] = np.where(by_shape[:, None], c["colour"], attr)
  c["variant"] = by_shape.astype(np.int64)
  c["attrs"][:, 0] = np.where(by_shape, -1, val)
  c["attrs"][:, 1] = np.where(by_shape, val, -1)


def _colour(rng, config, target, c):
  """Slot 0 has the answer colour; for "the <shape>", the only one."""
  n, slots = len(target), np.arange(config.max_objects)
  by_cell = rng.integers(0, 2, n).astype(bool)
  shape = rng.integers(0, len(config.shapes), n)
  c["colour"][:, 0] = target
  c["shape"][:, 0] = np.where(by_cell, c["shape"][:, 0], shape)
  dup = (
    ~by_cell[:, None] & (slots >= 1) & (c["shape"] == shape[:, None])
  )  # [B, M]
  c["shape"] = np.where(
    dup, _other(rng, c["shape"], len(config.shapes)), c["shape"]
  )
  c["variant"] = by_cell.astype(np.int64)
  c["attrs"][:, 0] = target
  c["attrs"][:, 1] = np.where(by_cell, -1, shape)


def _relative(rng, config, target, c):
  """Slots 0 and 1 are unique objects in cells ordered as the answer says."""
  n, g, nc = len(target), config.grid, len(config.colours)
  num_pairs, slots = nc * len(config.shapes), np.arange(config.max_objects)
  c["n_obj"] = _uniform_int(rng, 2, config.max_objects, n)
  rel = rng.integers(0, len(RELATIONS), n)
  row_a, col_a = np.divmod(rng.integers(0, g * g, n), g)
  horizontal = rel < 2
  row_b = np.where(horizontal, rng.integers(0, g, n), _other(rng, row_a, g))
  col_b = np.where(horizontal, _other(rng, col_a, g), rng.integers(0, g, n))
  holds = np.choose(
    rel, [col_a < col_b, col_a > col_b, row_a < row_b, row_a > row_b]
  )
  swap = holds != (target == 0)  # answer 0 is "yes"
  cell_a, cell_b = row_a * g + col_a, row_b * g + col_b
  rows = np.arange(n)
  # The two lowest keys give slots 0 and 1 their cells (keys are in [0, 1)).
  c["keys"][rows, np.where(swap, cell_b, cell_a)] = -2.0
  c["keys"][rows, np.where(swap, cell_a, cell_b)] = -1.0
  pair = c["shape"] * nc + c["colour"]  # [B, M]
  pair_a = pair[:, 0]
  pair_b = np.where(
    pair[:, 1] == pair_a,
    _other_pair(rng, pair_a, pair_a, num_pairs),
    pair[:, 1],
  )
  pair[:, 1] = pair_b
  clash = (slots >= 2) & ((pair == pair_a[:, None]) | (pair == pair_b[:, None]))
  pair = np.where(
    clash, _other_pair(rng, pair_a[:, None], pair_b[:, None], num_pairs), pair
  )
  c["shape"], c["colour"] = np.divmod(pair, nc)
  c["variant"] = rel
  c["attrs"][:] = np.stack(
    [pair_a % nc, pair_a // nc, pair_b % nc, pair_b // nc], axis=1
  )


def _exists(rng, config, target, c):
  """Slot 0 is the asked object ("yes"), or no object is ("no")."""
  n, nc = len(target), len(config.colours)
  num_pairs = nc * len(config.shapes)
  colour = rng.integers(0, nc, n)
  shape = rng.integers(0, len(config.shapes), n)
  asked = shape * nc + colour
  yes = target == 0
  pair = c["shape"] * nc + c["colour"]  # [B, M]
  pair[:, 0] = np.where(yes, asked, pair[:, 0])
  clash = ~yes[:, None] & (pair == asked[:, None])
  pair = np.where(
    clash, _other_pair(rng, asked[:, None], asked[:, None], num_pairs), pair
  )
  c["shape"], c["colour"] = np.divmod(pair, nc)
  c["attrs"][:, 0], c["attrs"][:, 1] = colour, shape


_CONDITION = {
  "count": _count,
  "colour": _colour,
  "relative": _relative,
  "exists": _exists,
}


def _candidates(rng, config: ShapesVQAConfig, qtype, target) -> Drawn:
  """One scene per (type, answer), drawn around that answer."""
  n, m, g = len(qtype), config.max_objects, config.grid
  c = {
    "n_obj": _uniform_int(rng, 1, m, n),
    "shape": rng.integers(0, len(config.shapes), (n, m)),
    "colour": rng.integers(0, len(config.colours), (n, m)),
    "keys": rng.random((n, g * g)),  # cells: the m lowest keys
    "variant": np.zeros(n, np.int64),
    "attrs": np.full((n, 4), -1, np.int64),
  }
  for t, name in enumerate(config.question_types):
    idx = np.flatnonzero(qtype == t)
    part = {k: v[idx] for k, v in c.items()}
    _CONDITION[name](rng, config, target[idx], part)
    for k, v in part.items():
      c[k][idx] = v
  cells = np.argsort(c["keys"], axis=1)[:, :m]  # [B, M]
  valid = np.arange(m) < c["n_obj"][:, None]

  def masked(x):
    return np.where(valid, x, -1).astype(np.int32)

  return Drawn(
    valid,
    masked(cells // g),
    masked(cells % g),
    masked(c["shape"]),
    masked(c["colour"]),
    qtype,
    target,
    c["variant"],
    c["attrs"],
  )


def _splitmix64(x: np.ndarray) -> np.ndarray:
  """SplitMix64's output function on uint64 arrays (wrapping arithmetic)."""
  x = x + np.uint64(0x9E3779B97F4A7C15)
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def scene_part(config: ShapesVQAConfig, drawn: Drawn) -> np.ndarray:
  """[B] the part in [0, num_splits) of each scene's layout."""
  nc, ns = len(config.colours), len(config.shapes)
  cell = drawn.row * config.grid + drawn.col
  code = np.where(
    drawn.valid, (cell * ns + drawn.shape) * nc + drawn.colour + 1, 0
  )
  code = np.sort(code, axis=1).astype(np.uint64)  # order-free: a set
  h = _splitmix64(np.full(len(code), config.seed, np.uint64))
  for j in range(code.shape[1]):
    h = _splitmix64(h ^ code[:, j])
  return (h % np.uint64(config.num_splits)).astype(np.int64)


def sample_split(
  rng: np.random.Generator,
  config: ShapesVQAConfig,
  num_examples: int,
  split_seed: int,
) -> Drawn:
  """Balanced questions over scenes of part `split_seed`.

  Args:
    rng: the random stream.
    config: what to draw.
    num_examples: number of examples `B`.
    split_seed: the part of the scene space, in [0, config.num_splits).

  Returns:
    The layouts and question parameters of `num_examples` examples.
  """
  types = config.question_types
  qtype = rng.permutation(np.arange(num_examples) % len(types))
  target = np.empty(num_examples, np.int64)
  for t, name in enumerate(types):
    idx = np.flatnonzero(qtype == t)
    target[idx] = rng.permutation(
      np.arange(len(idx)) % len(config.answers(name))
    )
  reps = (
    1 if config.num_splits == 1 else _CANDIDATES_PER_PART * config.num_splits
  )
  pending, out = np.arange(num_examples), {}
  for _ in range(_MAX_ROUNDS):
    need = np.repeat(pending, reps)  # sorted
    cand = _candidates(rng, config, qtype[need], target[need])
    ok = np.flatnonzero(scene_part(config, cand) == split_seed)
    got, first = np.unique(need[ok], return_index=True)
    for f in dataclasses.fields(Drawn):
      value = getattr(cand, f.name)
      if f.name not in out:
        out[f.name] = np.empty((num_examples,) + value.shape[1:], value.dtype)
      out[f.name][got] = value[ok[first]]
    pending = np.setdiff1d(pending, got, assume_unique=True)
    if not pending.size:
      return Drawn(**out)
  raise RuntimeError(
    f"found no scene of part {split_seed} of {config.num_splits} for "
    f"{pending.size} of {num_examples} examples in {_MAX_ROUNDS} rounds; "
    f"the scene space of {config} is too small for that many parts"
  )


def relevant_objects(
  config: ShapesVQAConfig, drawn: Drawn
) -> Bool[np.ndarray, "B M"]:
  """[B, M] the objects a question is about: those counted, the one whose
  colour is asked, the two compared, or those that make "is there" true."""
  name = np.asarray(config.question_types)[drawn.qtype][:, None]  # [B, 1]
  variant, attrs = drawn.variant[:, None], drawn.attrs
  slots = np.arange(drawn.valid.shape[1])
  is_colour = drawn.colour == attrs[:, :1]  # [B, M]
  is_shape = drawn.shape == attrs[:, 1:2]  # [B, M]
  return drawn.valid & np.select(
    [name == "count", name == "colour", name == "relative"],
    [np.where(variant == 0, is_colour, is_shape), slots == 0, slots <= 1],
    is_colour & is_shape,
  )


def question_words(
  config: ShapesVQAConfig, drawn: Drawn
) -> tuple[list[list[str]], list[str]]:
  """The question (a word list) and answer word of every example."""
  colours, shapes = config.colours, config.shapes
  answers = [config.answers(t) for t in config.question_types]
  questions = []
  for i, t in enumerate(drawn.qtype):
    name, v = config.question_types[t], drawn.variant[i]
    ca, sa, cb, sb = drawn.attrs[i]
    if name == "count":
      words = (
        ["how", "many", colours[ca], "shapes"]
        if v == 0
        else ["how", "many", PLURALS[shapes[sa]]]
      )
    elif name == "colour":
      words = ["what", "colour", "is", "the"] + (
        [shapes[sa]]
        if v == 0
        else [
          "shape",
          "at",
          "row",
          str(drawn.row[i, 0] + 1),
          "column",
          str(drawn.col[i, 0] + 1),
        ]
      )
    elif name == "relative":
      words = [
        "is",
        "the",
        colours[ca],
        shapes[sa],
        *RELATIONS[v],
        "the",
        colours[cb],
        shapes[sb],
      ]
    else:
      words = ["is", "there", article(colours[ca]), colours[ca], shapes[sa]]
    questions.append(words + ["?"])
  return questions, [answers[t][a] for t, a in zip(drawn.qtype, drawn.target)]
