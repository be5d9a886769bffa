"""Checkpoint tensors read on demand, one slice at a time.

A `LazyTensor` has a `shape` and a `dtype` and reads any box of itself
(`read_many`: one step-1 slice per dimension, several boxes at once).
The weight loaders describe each parameter as a `LazyTensor` in the
model's layout, built from the checkpoint's tensors by the layout changes
they need (`.T` / `transpose`, basic indexing such as `w[:, 0]`, `stack`
over layers), and `jaxexit.models.sharded_load` reads, for every device,
only the box of its shard. A change no box can follow (a reshape that
mixes a sharded dimension, GGUF dequantisation) is `computed`: the whole
tensor is built once per `read_many` and cut into the boxes asked for.

Sources: `from_array` (a numpy array or anything `np.asarray` takes) and
`open_safetensors` (a file's tensors, read lazily with safetensors'
`safe_open(...).get_slice`; nothing is read until a box is asked for).
`np.asarray(t)` reads the whole tensor.
"""

import math
from collections.abc import Callable, Sequence

import numpy as np

Box = tuple[slice, ...]  # one slice (step 1, int bounds) per dimension


def full_box(shape: Sequence[int]) -> Box:
  """The box of a whole array of `shape`."""
  return tuple(slice(0, n) for n in shape)


def normalise(box: Sequence[slice], shape: Sequence[int]) -> Box:
  """`box` with int bounds (as `jax.make_array_from_callback` gives it,
  `slice(None)` for a whole dimension).

  Raises:
    ValueError: a box of the wrong rank or with a step other than 1.
  """
  if len(box) != len(shape):
    raise ValueError(f"box {box} does not have one slice per dim of {shape}")
  out = []
  for s, n in zip(box, shape):
    start, stop, step = s.indices(n)
    if step != 1:
      raise ValueError(f"box {box}: slices must have step 1")
    out.append(slice(start, stop))
  return tuple(out)


class LazyTensor:
  """A tensor read box by box (see the module docstring).

  Attributes:
    shape: the tensor's shape.
    dtype: its numpy dtype (bfloat16 as `ml_dtypes.bfloat16`).
  """

  shape: tuple[int, ...]
  dtype: np.dtype

  def read_many(self, boxes: Sequence[Box]) -> list[np.ndarray]:
    """The values in each of `boxes` (normalised, see `normalise`)."""
    raise NotImplementedError

  @property
  def ndim(self) -> int:
    return len(self.shape)

  @property
  def size(self) -> int:
    return math.prod(self.shape)

  @property
  def T(self) -> "LazyTensor":  # noqa: N802 - numpy's name
    return self.transpose()

  def transpose(self, *axes: int) -> "LazyTensor":
    """`np.transpose`'s permutation (reversed dims when none given)."""
    axes = tuple(axes) or tuple(reversed(range(self.ndim)))
    if sorted(axes) != list(range(self.ndim)):
      raise ValueError(f"axes {axes} are no permutation of {self.ndim} dims")
    return _Transposed(self, axes)

  def __getitem__(self, key) -> "LazyTensor":
    """Basic indexing by ints and step-1 slices (`w[:, 0]`)."""
    return _View(self, key if isinstance(key, tuple) else (key,))

  def __array__(self, dtype=None, copy=None):
    del copy  # the read is always a new array
    value = self.read_many([full_box(self.shape)])[0]
    return value if dtype is None else value.astype(dtype)

  def __repr__(self) -> str:
    return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype})"


class _Source(LazyTensor):
  """A tensor whose boxes `read(box)` returns."""

  def __init__(self, read: Callable[[Box], np.ndarray], shape, dtype):
    self._read = read
    self.shape = tuple(int(n) for n in shape)
    self.dtype = np.dtype(dtype)

  def read_many(self, boxes):
    return [np.asarray(self._read(box)) for box in boxes]


class _Computed(LazyTensor):
  """A tensor `fn()` builds whole; its boxes are cut from one build."""

  def __init__(self, fn: Callable[[], np.ndarray], shape, dtype):
    self._fn = fn
    self.shape = tuple(int(n) for n in shape)
    self.dtype = np.dtype(dtype)

  def read_many(self, boxes):
    whole = np.asarray(self._fn())
    if whole.shape != self.shape:
      raise ValueError(
        f"a computed tensor has shape {whole.shape}; declared {self.shape}"
      )
    # Copies, so that no box keeps the whole tensor alive.
    return [np.array(whole[box]) for box in boxes]


class _Transposed(LazyTensor):
  def __init__(self, base: LazyTensor, axes: tuple[int, ...]):
    self._base, self._axes = base, axes
    self.shape = tuple(base.shape[a] for a in axes)
    self.dtype = base.dtype

  def read_many(self, boxes):
    inverse = np.argsort(self._axes)
    base_boxes = [tuple(box[i] for i in inverse) for box in boxes]
    return [v.transpose(self._axes) for v in self._base.read_many(base_boxes)]


class _View(LazyTensor):
  """`base[key]` for ints and step-1 slices."""

  def __init__(self, base: LazyTensor, key: tuple):
    if len(key) > base.ndim:
      raise ValueError(f"index {key} has more entries than {base.shape}")
    key = key + (slice(None),) * (base.ndim - len(key))
    self._base, self._key, shape = base, [], []
    for k, n in zip(key, base.shape):
      if isinstance(k, slice):
        (k,) = normalise((k,), (n,))
        shape.append(k.stop - k.start)
      elif not -n <= int(k) < n:
        raise IndexError(f"index {k} is out of bounds for size {n}")
      else:
        k = int(k) % n
      self._key.append(k)
    self.shape, self.dtype = tuple(shape), base.dtype

  def read_many(self, boxes):
    base_boxes = []
    for box in boxes:
      parts, it = [], iter(box)
      for k in self._key:
        if isinstance(k, slice):
          s = next(it)
          parts.append(slice(k.start + s.start, k.start + s.stop))
        else:
          parts.append(slice(k, k + 1))
      base_boxes.append(tuple(parts))
    return [
      v.reshape(tuple(b.stop - b.start for b in box))
      for v, box in zip(self._base.read_many(base_boxes), boxes)
    ]


class _Stacked(LazyTensor):
  """`np.stack(parts)`: a leading axis over equally shaped tensors."""

  def __init__(self, parts: Sequence[LazyTensor]):
    shapes = {p.shape for p in parts}
    dtypes = {p.dtype for p in parts}
    if len(shapes) != 1 or len(dtypes) != 1:
      raise ValueError(
        f"stacked tensors differ: shapes {shapes}, dtypes {dtypes}"
      )
    self._parts = list(parts)
    self.shape = (len(parts), *shapes.pop())
    self.dtype = dtypes.pop()

  def read_many(self, boxes):
    # One read_many per part, for every box that covers it.
    wanted = {}
    for i, box in enumerate(boxes):
      for row in range(box[0].start, box[0].stop):
        wanted.setdefault(row, []).append((i, box[1:]))
    got = {}
    for row, asks in wanted.items():
      values = self._parts[row].read_many([b for _, b in asks])
      got.update({(i, row): v for (i, _), v in zip(asks, values)})
    return [
      np.stack([got[i, row] for row in range(box[0].start, box[0].stop)])
      if box[0].stop > box[0].start
      else np.zeros(tuple(b.stop - b.start for b in box), self.dtype)
      for i, box in enumerate(boxes)
    ]


def from_array(value) -> LazyTensor:
  """`value` (a `LazyTensor`, or anything `np.asarray` takes) as a tensor
  whose boxes are views of it."""
  if isinstance(value, LazyTensor):
    return value
  array = np.asarray(value)
  return _Source(lambda box: array[box], array.shape, array.dtype)


def computed(fn: Callable[[], np.ndarray], shape, dtype) -> LazyTensor:
  """A tensor built whole by `fn()` when read (a layout change boxes
  cannot follow, dequantisation); `shape` and `dtype` are its result's."""
  return _Computed(fn, shape, dtype)


def stack(parts: Sequence) -> LazyTensor:
  """`np.stack(parts)` without reading them."""
  return _Stacked([from_array(p) for p in parts])


def open_safetensors(path: str) -> dict[str, LazyTensor]:
  """The tensors of a `.safetensors` file, each read lazily.

  The file is memory-mapped by `safe_open` and a box is read with
  `get_slice(name)[box]`, so only the bytes of the asked boxes are copied.

  Raises:
    ValueError: naming the file, when safetensors cannot open it
      (truncated, or not safetensors).
  """
  from safetensors import safe_open  # optional `models` extra

  try:
    handle = safe_open(path, framework="numpy")
    views = {name: handle.get_slice(name) for name in handle.keys()}
  except Exception as e:  # noqa: BLE001 - SafetensorError and OSErrors.
    raise ValueError(
      f"{path}: cannot read this safetensors file (truncated "
      f"or not safetensors?): {type(e).__name__}: {e}"
    ) from e
  out = {}
  for name, view in views.items():
    dtype = _SAFETENSORS_DTYPES.get(view.get_dtype())
    if dtype is None:
      raise ValueError(
        f"{path}: tensor {name!r} has dtype {view.get_dtype()}, which the "
        f"loaders do not read (known: {sorted(_SAFETENSORS_DTYPES)})"
      )
    # The closure keeps the file's handle (its memory map) open.
    out[name] = _Source(
      lambda box, view=view, handle=handle: view[box],
      view.get_shape(),
      dtype,
    )
  return out


def _safetensors_dtypes() -> dict[str, np.dtype]:
  import ml_dtypes

  names = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
  }
  return {k: np.dtype(v) for k, v in names.items()}


_SAFETENSORS_DTYPES = _safetensors_dtypes()
