"""Reads PyTorch `torch.save` state dicts into numpy, without torch.

Both on-disk formats are handled:

* the zip format (torch >= 1.6, the default): `<root>/data.pkl` is a pickle
  whose persistent ids `('storage', StorageType, key, location, numel)` name
  raw little-endian storages in `<root>/data/<key>`;
* the legacy format (`_use_new_zipfile_serialization=False`, and every file
  written before torch 1.6): five things back to back in one stream, the
  pickled magic number, protocol version (1001) and sys-info dict, the
  pickled object (persistent ids `('storage', StorageType, key, location,
  numel, view_metadata)`), the pickled list of storage keys, and then for each
  key an int64 element count followed by the raw storage bytes.

The unpicklers only build what a state dict needs (`collections.OrderedDict`,
`torch.<Dtype>Storage` types, `torch._utils._rebuild_tensor[_v2]` and
`_rebuild_parameter[_with_state]`); any other global raises
`UnsupportedCheckpointError` naming it, so no code from the file runs. A tensor
is `as_strided(storage[offset:], size, stride)` copied to a C-contiguous
array: views and tensors sharing one storage come back as independent arrays
with the values torch would show.
"""

import dataclasses
import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Mapping

import ml_dtypes
import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

_STORAGE_DTYPES = {
  "DoubleStorage": np.float64,
  "FloatStorage": np.float32,
  "HalfStorage": np.float16,
  "BFloat16Storage": ml_dtypes.bfloat16,
  "LongStorage": np.int64,
  "IntStorage": np.int32,
  "ShortStorage": np.int16,
  "CharStorage": np.int8,
  "ByteStorage": np.uint8,
  "BoolStorage": np.bool_,
  "ComplexFloatStorage": np.complex64,
  "ComplexDoubleStorage": np.complex128,
}


class CorruptCheckpointError(ValueError):
  """The file is truncated or is not a well-formed torch checkpoint."""


class UnsupportedCheckpointError(ValueError):
  """A well-formed checkpoint this reader deliberately does not load."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
  name: str
  dtype: np.dtype


@dataclasses.dataclass(eq=False)
class _Storage:
  key: str
  dtype: np.dtype
  numel: int


@dataclasses.dataclass(eq=False)
class _TensorRef:
  """A tensor before its storage bytes are read (legacy files put them last)."""

  storage: _Storage
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  # `_rebuild_tensor_v2` appends requires_grad, backward hooks and metadata.
  del unused
  return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *unused):
  # Also `_rebuild_parameter_with_state`: requires_grad, hooks[, state].
  del unused
  return data


_GLOBALS = {
  ("collections", "OrderedDict"): OrderedDict,
  ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
  ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
  ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
  ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _StateDictUnpickler(pickle.Unpickler):
  """Builds `_TensorRef`s; storages come from `storage_fn(key, type, numel)`."""

  def __init__(self, file, storage_fn, pid_length: int):
    super().__init__(file)
    self._storage_fn = storage_fn
    self._pid_length = pid_length
    self.storages: dict[str, _Storage] = {}

  def find_class(self, module: str, name: str):
    if (module, name) in _GLOBALS:
      return _GLOBALS[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name, np.dtype(_STORAGE_DTYPES[name]))
    raise UnsupportedCheckpointError(
      f"the checkpoint pickles {module}.{name}, which a state dict does not "
      "need; refusing to load it"
    )

  def persistent_load(self, pid):
    if (
      not isinstance(pid, tuple)
      or len(pid) != self._pid_length
      or pid[0] != "storage"
      or not isinstance(pid[1], _StorageType)
    ):
      raise CorruptCheckpointError(f"unexpected persistent id {pid!r}")
    storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
    if self._pid_length == 6 and pid[5] is not None:
      raise UnsupportedCheckpointError(
        f"storage {key!r} is a storage view (torch < 0.4 legacy files)"
      )
    if key not in self.storages:
      self.storages[key] = _Storage(key, storage_type.dtype, numel)
      self._storage_fn(key, storage_type.dtype, numel)
    return self.storages[key]


def _to_array(ref: _TensorRef, flat: np.ndarray) -> np.ndarray:
  """Copies the strided view `ref` of the 1-D storage `flat`."""
  size, stride = ref.size, ref.stride
  if len(size) != len(stride) or any(n < 0 for n in size) or ref.offset < 0:
    raise CorruptCheckpointError(
      f"bad tensor geometry size={size} stride={stride} offset={ref.offset}"
    )
  if 0 in size:
    return np.zeros(size, flat.dtype)
  last = ref.offset + sum((n - 1) * s for n, s in zip(size, stride))
  if min(stride, default=0) < 0 or last >= flat.size:
    raise CorruptCheckpointError(
      f"tensor (size={size}, stride={stride}, offset={ref.offset}) reaches "
      f"past its storage {ref.storage.key!r} of {flat.size} elements"
    )
  view = np.lib.stride_tricks.as_strided(
    flat[ref.offset :],
    shape=size,
    strides=tuple(s * flat.itemsize for s in stride),
  )
  return view.copy()


def _storage_array(
  raw: bytes, dtype: np.dtype, numel: int, key: str
) -> np.ndarray:
  nbytes = numel * dtype.itemsize
  if numel < 0 or len(raw) < nbytes:
    raise CorruptCheckpointError(
      f"storage {key!r} holds {len(raw)} bytes; {numel} elements of "
      f"{dtype} need {nbytes}"
    )
  return np.frombuffer(raw, dtype=dtype, count=numel)


def _read_zip(file) -> tuple[object, dict[str, np.ndarray]]:
  try:
    archive = zipfile.ZipFile(file)
  except zipfile.BadZipFile as e:
    raise CorruptCheckpointError(
      f"starts like a zip archive (the torch >= 1.6 format) but has no "
      f"readable central directory, so it is truncated or damaged ({e})"
    ) from e
  pickles = [
    n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"
  ]
  if len(pickles) != 1:
    raise CorruptCheckpointError(
      f"expected one data.pkl in the zip archive; found {pickles}"
    )
  root = pickles[0][: -len("data.pkl")]
  if root + "byteorder" in archive.namelist():
    order = archive.read(root + "byteorder").decode()
    if order != "little":
      raise UnsupportedCheckpointError(f"byte order {order!r} (not little)")
  flats: dict[str, np.ndarray] = {}

  def load_storage(key, dtype, numel):
    name = f"{root}data/{key}"
    try:
      raw = archive.read(name)
    except KeyError as e:
      raise CorruptCheckpointError(f"missing storage file {name!r}") from e
    flats[key] = _storage_array(raw, dtype, numel, key)

  unpickler = _StateDictUnpickler(
    io.BytesIO(archive.read(pickles[0])), load_storage, pid_length=5
  )
  return unpickler.load(), flats


def _read_legacy(file) -> tuple[object, dict[str, np.ndarray]]:
  magic = pickle.load(file)
  if magic != LEGACY_MAGIC_NUMBER:
    raise CorruptCheckpointError(f"bad magic number {magic!r}")
  protocol = pickle.load(file)
  if protocol != LEGACY_PROTOCOL_VERSION:
    raise CorruptCheckpointError(f"unknown protocol version {protocol!r}")
  sys_info = pickle.load(file)
  if not isinstance(sys_info, dict) or not sys_info.get("little_endian"):
    raise UnsupportedCheckpointError(
      f"sys info {sys_info!r} is not from a little-endian machine"
    )
  unpickler = _StateDictUnpickler(file, lambda *_: None, pid_length=6)
  obj = unpickler.load()
  keys = pickle.load(file)
  if not isinstance(keys, list) or set(keys) != set(unpickler.storages):
    raise CorruptCheckpointError(
      f"storage key list {keys!r} does not match the storages the object "
      f"uses {sorted(unpickler.storages)}"
    )
  file_size = os.fstat(file.fileno()).st_size
  flats = {}
  for key in keys:
    storage = unpickler.storages[key]
    header = file.read(8)
    if len(header) != 8:
      raise CorruptCheckpointError(f"storage {key!r}: size header truncated")
    (numel,) = struct.unpack("<q", header)
    if numel != storage.numel:
      raise CorruptCheckpointError(
        f"storage {key!r} has {numel} elements; the pickle says {storage.numel}"
      )
    # Bound the read by what is left, so a corrupt count cannot allocate.
    nbytes = min(numel * storage.dtype.itemsize, file_size - file.tell())
    raw = file.read(nbytes)
    flats[key] = _storage_array(raw, storage.dtype, numel, key)
  return obj, flats


def _read(path: str) -> tuple[object, dict[str, np.ndarray]]:
  with open(path, "rb") as file:
    head = file.read(4)
    file.seek(0)
    if head.startswith(b"PK"):
      return _read_zip(file)
    if head.startswith(b"\x80"):
      return _read_legacy(file)
  raise CorruptCheckpointError(
    f"starts with {head!r}: neither a zip archive nor a legacy pickle (the "
    "pre-0.4 tar format is not supported)"
  )


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a `torch.save`d state dict (zip or legacy format) without torch.

  Args:
    path: the `.pth` / `.pt` / `.bin` file. A top-level `{"state_dict": ...}`
      wrapper (training checkpoints) is unwrapped.

  Returns:
    `{name: C-contiguous numpy array}` in the file's order, with the
    tensors' dtypes (bfloat16 as `ml_dtypes.bfloat16`).

  Raises:
    ValueError: if `path` does not exist.
    CorruptCheckpointError: naming the path and what is wrong, for a truncated
      or malformed file.
    UnsupportedCheckpointError: for a global outside the state-dict
      allowlist, a non-tensor value, big-endian data or storage views.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"checkpoint path {path!r} is not a file")
  try:
    obj, flats = _read(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
      obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
      raise UnsupportedCheckpointError(
        f"holds a {type(obj).__name__}, not a state dict"
      )
    out = {}
    for name, ref in obj.items():
      if not isinstance(ref, _TensorRef):
        raise UnsupportedCheckpointError(
          f"entry {name!r} is a {type(ref).__name__}, not a tensor"
        )
      out[str(name)] = _to_array(ref, flats[ref.storage.key])
    return out
  except (CorruptCheckpointError, UnsupportedCheckpointError) as e:
    raise type(e)(f"{path}: {e}") from e
  except (
    pickle.UnpicklingError,
    EOFError,
    zipfile.BadZipFile,
    struct.error,
    TypeError,
    ValueError,
    KeyError,
    IndexError,
    AttributeError,
  ) as e:
    raise CorruptCheckpointError(
      f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})"
    ) from e
