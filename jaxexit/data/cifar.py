# Over 400 lines: 391 before ruff format; loader, cache, fallbacks.
"""CIFAR-10 / CIFAR-100 as uint8 image arrays: `load_cifar`, `train_val_split`.

CIFAR (Krizhevsky, 2009, "Learning Multiple Layers of Features from Tiny
Images") has 32x32 RGB images in 10 or 100 classes. Two sources:

  files  the class-folder JPEG archive `<data dir>/cifar10/cifar10_<split>_
         jpg.tar.gz` (members `<split>/<class>/<n>.jpg`; CIFAR-10 only), found
         through `jaxexit.data.location`. It is decoded once with Pillow and
         cached as `.npz` (see `load_cifar`). The JPEGs are lossy re-encodings,
         so pixels differ slightly from the CIFAR binaries.
  tfds   tensorflow-datasets `cifar10` / `cifar100` through `tfds.data_source`
         (ArrayRecord; needs no TensorFlow). Downloads only when asked.
  bundled  when the data dir lacks the archive (and, for source="auto", tfds
         has no prepared data), the subset shipped with jaxexit: the first
         500 train / 100 test images of each class, same archive layout
         (`jaxexit.data.bundled`). Loading it prints a line saying so, and
         the split remembers the full size (`ImageSplit.subset_of`), so
         `train_val_split` and `cifar_vqa` say when a request exceeds it.

Both give the same order of classes: class names sorted alphabetically
(airplane, automobile, bird, ...), label = position in that tuple.

Axes: `B` examples, `H`, `W` image height and width (here not "heads"), and a
trailing RGB channel axis of size 3.
"""

import dataclasses
import gzip
import io
import os
import tarfile
import tempfile
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from jaxtyping import Int32, UInt8
from PIL import Image

from jaxexit import checks
from jaxexit.data import bundled, location
from jaxexit.data.glue import TfdsUnavailableError

NAMES = ("cifar10", "cifar100")
SPLITS = ("train", "test")
SOURCES = ("auto", "files", "tfds")
IMAGE_SIZE = 32
CACHE_ENV_VAR = "JAXEXIT_CACHE"
# Bump when the decoded layout changes, so old cache files are not reused.
_CACHE_FORMAT = 1
_FILES_HINT = (
  "\nOr use source='files' (CIFAR-10 only).\n"
  + location.how_to_obtain("cifar10")
)


class CorruptDataError(ValueError):
  """A dataset file exists but cannot be read as the expected data."""


@dataclasses.dataclass(frozen=True)
class ImageSplit:
  """Labelled images of one split, in host memory.

  Attributes:
    images: [B, H, W, 3] uint8 RGB images.
    labels: [B] int32 class ids, positions in `class_names`.
    class_names: the class names, sorted.
    subset_of: for the subset bundled with jaxexit, the size of the full
      split it was drawn from; None otherwise.
  """

  images: UInt8[np.ndarray, "B H W 3"]
  labels: Int32[np.ndarray, "B"]
  class_names: tuple[str, ...]
  subset_of: int | None = None

  def __post_init__(self):
    if (
      self.images.dtype != np.uint8
      or self.images.ndim != 4
      or self.images.shape[-1] != 3
    ):
      raise ValueError(
        f"images must be uint8 [B, H, W, 3]; got "
        f"{self.images.dtype} {self.images.shape}"
      )
    if self.labels.shape != self.images.shape[:1]:
      raise ValueError(
        f"labels must be [B] for images {self.images.shape}; "
        f"got {self.labels.shape}"
      )
    num = len(self.class_names)
    if self.labels.size and not (
      0 <= self.labels.min() and self.labels.max() < num
    ):
      raise ValueError(
        f"labels must lie in [0, {num}) for {num} class_names; got range "
        f"[{self.labels.min()}, {self.labels.max()}]"
      )

  def __len__(self) -> int:
    return len(self.labels)

  def take(self, idx: np.ndarray | slice | Sequence[int]) -> "ImageSplit":
    """The examples at `idx` (indices, a boolean mask or a slice).

    The result is the caller's own selection: `subset_of` is not kept.
    """
    if not isinstance(idx, slice):
      idx = np.asarray(idx)
      idx = (
        np.flatnonzero(idx)
        if idx.dtype == bool
        else idx.astype(np.int64).reshape(-1)
      )
    return ImageSplit(self.images[idx], self.labels[idx], self.class_names)


def default_cache_dir() -> Path:
  """`$JAXEXIT_CACHE`, else `~/.cache/jaxexit` (read at call time)."""
  env = os.environ.get(CACHE_ENV_VAR)
  return Path(env).expanduser() if env else Path.home() / ".cache" / "jaxexit"


def _member_bytes(archive: Path, split: str) -> list[tuple[str, str, bytes]]:
  """(class, member name, bytes) of every image file, in archive order."""
  found, member = [], "<gzip/tar header>"
  try:
    with tarfile.open(archive, "r:gz") as tar:
      for info in tar:
        member = info.name
        if info.isdir():
          continue
        parts = info.name.split("/")
        if not info.isfile() or len(parts) != 3 or parts[0] != split:
          raise CorruptDataError(
            f"{archive}: member {info.name!r} is not a file "
            f"'{split}/<class>/<image>'"
          )
        found.append((parts[1], info.name, tar.extractfile(info).read()))
      # tar stops at its end-of-archive blocks, which garbage can fake; reading
      # the gzip stream to its end checks its length and CRC.
      member = f"after {member!r}"
      while tar.fileobj.read(1 << 20):
        pass
  except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
    raise CorruptDataError(
      f"{archive}: truncated or corrupt archive at member {member}: "
      f"{type(e).__name__}: {e}"
    ) from e
  if not found:
    raise CorruptDataError(f"{archive}: no '{split}/<class>/<image>' members")
  return found


def _decode(archive: Path, member: str, data: bytes) -> np.ndarray:
  """[H, W, 3] uint8 pixels of one JPEG member."""
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      mode, size, pixels = image.mode, image.size, np.asarray(image)
  except Exception as e:  # Pillow raises assorted types; all mean "corrupt".
    raise CorruptDataError(
      f"{archive}: cannot decode member {member!r}: {type(e).__name__}: {e}"
    ) from e
  if mode != "RGB" or size != (IMAGE_SIZE, IMAGE_SIZE):
    raise CorruptDataError(
      f"{archive}: member {member!r} is a {size[0]}x{size[1]} {mode} image; "
      f"expected {IMAGE_SIZE}x{IMAGE_SIZE} RGB"
    )
  return pixels


def decode_archive(archive: str | os.PathLike, split: str) -> ImageSplit:
  """Decodes a class-folder JPEG archive (no caching; see `load_cifar`).

  Args:
    archive: a `.tar.gz` with members `<split>/<class>/<image>`.
    split: the top folder its members must share ("train" or "test").

  Returns:
    The images sorted by class name, then member name.

  Raises:
    CorruptDataError: the archive is truncated or not gzip/tar, a member is
      not `<split>/<class>/<image>`, or an image cannot be decoded or is not
      32x32 RGB; the message names the archive and the member.
  """
  archive = Path(archive)
  members = sorted(_member_bytes(archive, split), key=lambda m: m[:2])
  class_names = tuple(sorted({c for c, _, _ in members}))
  images = np.empty((len(members), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
  for i, (_, name, data) in enumerate(members):
    images[i] = _decode(archive, name, data)
  label_of = {c: i for i, c in enumerate(class_names)}
  labels = np.asarray([label_of[c] for c, _, _ in members], np.int32)
  return ImageSplit(images, labels.reshape(-1), class_names)


def _cache_path(archive: Path, name: str, split: str, cache_dir: Path) -> Path:
  stat = archive.stat()
  return (
    cache_dir / "cifar" / f"{name}_{split}_v{_CACHE_FORMAT}_"
    f"{stat.st_size}_{stat.st_mtime_ns}.npz"
  )


def _read_cache(path: Path) -> ImageSplit | None:
  """The cached split, or None when absent or unreadable."""
  if not path.is_file():
    return None
  try:
    with np.load(path) as f:
      return ImageSplit(
        f["images"], f["labels"], tuple(str(c) for c in f["class_names"])
      )
  except Exception as e:  # A damaged cache file is re-decoded, not fatal.
    warnings.warn(f"ignoring unreadable cache file {path}: {e}")
    return None


def _write_cache(path: Path, data: ImageSplit) -> None:
  """Writes `data` to `path` atomically (temp file in the folder + rename)."""
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
      with os.fdopen(fd, "wb") as f:
        np.savez(
          f,
          images=data.images,
          labels=data.labels,
          class_names=np.asarray(data.class_names),
        )
      os.replace(tmp, path)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
  except OSError as e:  # A read-only cache only costs a re-decode next time.
    warnings.warn(f"cannot write cache file {path}: {e}")


def _decode_cached(
  archive: Path, name: str, split: str, cache_dir
) -> ImageSplit:
  cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
  path = _cache_path(archive, name, split, cache_dir.expanduser())
  data = _read_cache(path)
  if data is None:
    data = decode_archive(archive, split)
    _write_cache(path, data)
  return data


def _load_files(name: str, split: str, data_dir, cache_dir) -> ImageSplit:
  if name != "cifar10":
    raise ValueError(
      f"source='files' has only cifar10; got name={name!r} (use source='tfds')"
    )
  archive = location.require_file(name, split, data_dir=data_dir)
  return _decode_cached(archive, name, split, cache_dir)


def _load_bundled(
  split: str, data_dir, cache_dir, missing: location.DataNotFoundError
) -> ImageSplit:
  """The bundled CIFAR-10 subset; re-raises `missing` when none is shipped."""
  archive = bundled.cifar_archive(split)
  if archive is None:
    raise missing
  size, full = bundled.cifar_subset_size(split), bundled.CIFAR_FULL[split]
  bundled.notice(
    f"cifar10 {split}: not in {bundled.missing_from('cifar10', data_dir)}; "
    f"using the {size:,}-image subset bundled with jaxexit (first "
    f"{bundled.CIFAR_PER_CLASS[split]} per class of the {full:,}; "
    f"{bundled.SOURCES})"
  )
  data = _decode_cached(archive, "cifar10_bundled", split, cache_dir)
  return dataclasses.replace(data, subset_of=full)


def _load_tfds(
  name: str, split: str, data_dir, download: bool, hint: str = ""
) -> ImageSplit:
  """Reads tfds `name` through `tfds.data_source`; `hint` ends any error."""
  try:
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise TfdsUnavailableError(
      f"source='tfds' needs tensorflow-datasets, which is not importable "
      f"({e}).{hint}"
    ) from e
  try:
    source = tfds.data_source(
      name, split=split, data_dir=data_dir, download=download
    )
    class_names = tuple(source.dataset_info.features["label"].names)
    records = [source[i] for i in range(len(source))]
  except Exception as e:  # tfds raises assorted types; all mean "unavailable".
    raise TfdsUnavailableError(
      f"cannot read tfds {name!r} split {split!r} from data_dir={data_dir} "
      f"(None: the tfds default) with download={download}: "
      f"{type(e).__name__}: {e}\nPass download=True to let tfds fetch "
      f"it.{hint}"
    ) from e
  images = np.stack([np.asarray(r["image"], np.uint8) for r in records])
  labels = np.asarray([r["label"] for r in records], np.int32).reshape(-1)
  return ImageSplit(images, labels, class_names)


def load_cifar(
  name: str = "cifar10",
  split: str = "train",
  *,
  data_dir: str | os.PathLike | None = None,
  cache_dir: str | os.PathLike | None = None,
  source: str = "auto",
  download: bool = False,
  use_bundled: bool = True,
) -> ImageSplit:
  """Loads one split of CIFAR-10 or CIFAR-100.

  With source="files" the archive is decoded once; later calls read
  `<cache_dir>/cifar/<name>_<split>_v<format>_<size>_<mtime>.npz`, whose name
  changes (forcing a re-decode) when the archive changes.

  Args:
    name: "cifar10" or "cifar100" (the latter only through tfds).
    split: "train" or "test".
    data_dir: for the files source, the jaxexit data dir (None:
      `$JAXEXIT_DATA`, then the default; see `jaxexit.data.location`); for
      source="tfds", the tensorflow-datasets data dir (None: tfds' default).
      With source="auto" it is the jaxexit data dir, and the tfds fallback
      uses tfds' default dir.
    cache_dir: folder of decoded archives (None: `$JAXEXIT_CACHE`, else
      `~/.cache/jaxexit`).
    source: "files", "tfds", or "auto": files when the archive exists, else
      tfds.
    download: let tfds download and prepare missing data.
    use_bundled: for CIFAR-10 with source "files" or "auto", fall back to the
      subset bundled with jaxexit when the archive (and, for "auto", tfds
      data) is missing.

  Returns:
    An `ImageSplit` of 32x32 images, classes sorted by name (from the
    bundled subset: 5,000 train / 1,000 test images, `subset_of` set).

  Raises:
    ValueError: unknown name, split or source; source="files" for cifar100.
    DataNotFoundError: the archive is missing (source="files"), or, for
      source="auto", both the archive and tfds data (a TfdsUnavailableError
      whose message includes how to obtain the archive).
    TfdsUnavailableError: source="tfds" and tfds or its data is unavailable.
    CorruptDataError: the archive or one of its images is damaged.
  """
  checks.one_of("name", name, NAMES)
  checks.one_of("split", split, SPLITS)
  checks.one_of("source", source, SOURCES)
  if source == "tfds":
    return _load_tfds(name, split, data_dir, download, _FILES_HINT)
  if source == "files" or name == "cifar10":
    try:
      return _load_files(name, split, data_dir, cache_dir)
    except location.DataNotFoundError as missing:
      if source == "auto":
        try:
          return _load_tfds(name, split, None, download)
        except TfdsUnavailableError as e:
          missing = TfdsUnavailableError(f"{missing}\n\nNor from tfds: {e}")
      if not use_bundled:
        raise missing from None
      return _load_bundled(split, data_dir, cache_dir, missing)
  return _load_tfds(name, split, None, download)


def train_val_split(
  split: ImageSplit, num_val: int, *, seed: int = 0
) -> tuple[ImageSplit, ImageSplit]:
  """A seeded, class-stratified held-out split (e.g. 5000 of CIFAR-10 train).

  Each class gives `num_val * class_count / B` images, rounded by largest
  remainder so the total is exactly `num_val`; within a class the held-out
  images are drawn from `np.random.default_rng(seed)`. Both parts keep the
  original order of `split`.

  When `split` is the bundled subset (`subset_of` set) and `num_val` does
  not fit it, the same share of the subset is held out instead (5000 of the
  full 50,000 becomes 500 of the 5,000), and a line on stderr says so.

  Args:
    split: the split to divide, `B` examples.
    num_val: held-out size, in [1, B - 1].
    seed: random seed (a non-negative int).

  Returns:
    (train, val) with `B - num_val` and `num_val` examples.

  Raises:
    ValueError: `num_val` outside [1, B - 1] (for a bundled subset: outside
      [1, `subset_of` - 1]), or a negative seed.
  """
  total = len(split)
  checks.positive_int("num_val", num_val)
  if split.subset_of is not None and total - 1 < num_val < split.subset_of:
    asked, num_val = num_val, round(num_val * total / split.subset_of)
    num_val = min(max(num_val, 1), total - 1)
    bundled.notice(
      f"cifar10: num_val={asked} does not fit the {total:,}-image bundled "
      f"subset; holding out {num_val} (the same share of the full "
      f"{split.subset_of:,})"
    )
  if num_val > total - 1:
    raise ValueError(
      f"num_val must lie in [1, {total - 1}] for a split of "
      f"{total} examples; got num_val={num_val}"
    )
  checks.positive_int("seed", seed, minimum=0)
  counts = np.bincount(split.labels, minlength=len(split.class_names))
  quota = num_val * counts / total
  per_class = np.floor(quota).astype(np.int64)
  # Largest remainder; a stable sort breaks ties by class id.
  order = np.argsort(-(quota - per_class), kind="stable")
  per_class[order[: num_val - per_class.sum()]] += 1
  rng = np.random.default_rng(seed)
  val = np.zeros(total, bool)
  for label, k in enumerate(per_class):
    members = np.flatnonzero(split.labels == label)
    val[rng.choice(members, size=k, replace=False)] = True
  return split.take(np.flatnonzero(~val)), split.take(np.flatnonzero(val))
