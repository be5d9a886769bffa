"""Output folders that several invocations share: merged, atomic, locked.

Every experiment writes its `results.json` through `merge_records`: the
records of this invocation replace only the stored records with the same
key values (by default `(task, method, seed)`), all others are kept, so
`--method pabee --out D` followed by `--method static --out D` leaves both.
The file is written atomically (a temporary file in the same folder, then
`os.replace`), so a crash leaves the old file or the new one, never half of
one, under an exclusive `fcntl.flock` on `<path>.lock`.

`lock_output_dir(out)` is what an experiment holds for its whole run: a
second run into the same `--out` is refused at start, before it trains
anything, instead of interleaving checkpoints and results with the first.

Locks are advisory and non-blocking: a second holder gets `OutputLocked`
naming the lock file and the holder's pid, never a wait. `flock` locks
belong to an open file, so one process taking the same lock twice is
refused as well. Lock files are left in place (deleting them would race
with a concurrent opener); their content is the holder's pid while held.
"""

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

DEFAULT_KEY = ("task", "method", "seed")
DIR_LOCK = ".jaxexit-out.lock"


class OutputLocked(RuntimeError):
  """Another writer holds the lock of an output file or folder."""


@contextlib.contextmanager
def _flock(lock_path: pathlib.Path, what: str) -> Iterator[None]:
  """Holds an exclusive non-blocking flock on `lock_path`."""
  lock_path.parent.mkdir(parents=True, exist_ok=True)
  fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise
      holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
      raise OutputLocked(
        f"{what} is being written by another run (pid {holder or '?'}), "
        f"which holds the lock file {lock_path}; wait for it to finish "
        "or write to another --out"
      ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    try:
      yield
    finally:
      os.ftruncate(fd, 0)
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)


@contextlib.contextmanager
def lock_output_dir(out: str | os.PathLike) -> Iterator[pathlib.Path]:
  """Holds `out` for one run; a second concurrent run into it is refused.

  Example::

    with lock_output_dir(args.out) as out:
      ...  # train, evaluate, merge_records(out / "results.json", records)

  Args:
    out: the output folder (created if missing).

  Yields:
    `out` as a `pathlib.Path`.

  Raises:
    OutputLocked: another run holds `out`; the message names the lock file
      and that run's pid.
  """
  out = pathlib.Path(out)
  with _flock(out / DIR_LOCK, f"output folder {out}"):
    yield out


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
  """Writes `obj` as indented JSON through a temporary file and a rename.

  A crash before the rename leaves the previous file untouched (and the
  temporary file is removed when Python unwinds). The file gets the usual
  permissions of a new file (0666 less the umask), not mkstemp's 0600.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(
    dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
  )
  umask = os.umask(0)
  os.umask(umask)
  try:
    os.fchmod(fd, 0o666 & ~umask)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(json.dumps(obj, indent=1) + "\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise


def record_key(record: Mapping[str, Any], key: Sequence[str]) -> tuple:
  """The record's identity: its values of `key` (None where absent)."""
  return tuple(json.dumps(record.get(k), sort_keys=True) for k in key)


def _read(path: pathlib.Path) -> tuple[list[dict], dict | None]:
  """(records, the other top-level fields or None for a plain list)."""
  if not path.exists():
    return [], None
  try:
    data = json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(
      f"{path} is not valid JSON ({e}); it was left as it is: move it "
      "away or write to another --out"
    ) from e
  rest = None
  if isinstance(data, dict) and isinstance(data.get("records"), list):
    rest = {k: v for k, v in data.items() if k != "records"}
    data = data["records"]
  if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
    raise ValueError(
      f"{path} holds no list of records (a JSON list of objects, or an "
      "object with a 'records' list); it was left as it is"
    )
  return data, rest


def _merge_extra(old: dict | None, new: Mapping[str, Any]) -> dict:
  """Top-level fields: dicts are updated key by key, others replaced."""
  out = dict(old or {})
  for k, v in new.items():
    if isinstance(v, Mapping) and isinstance(out.get(k), dict):
      out[k] = {**out[k], **v}
    else:
      out[k] = v
  return out


def merge_records(
  path: str | os.PathLike,
  records: Sequence[Mapping],
  key: Sequence[str] = DEFAULT_KEY,
  *,
  extra: Mapping[str, Any] | None = None,
) -> list[dict]:
  """Merges `records` into the results file at `path` and returns them all.

  Stored records whose key values equal a new record's are replaced (the
  new record takes the place of the first of them); the others keep their
  order; new keys are appended in the order given.

  Args:
    path: the JSON file (`results.json`); created if missing.
    records: this invocation's flat records (JSON-able values).
    key: the fields that identify a record; a missing field counts as None.
    extra: other top-level fields (e.g. per-method training logs). With
      `extra`, or when the file already is an object, the file is
      `{"records": [...], **fields}`; mapping fields are merged key by key
      (`{"training": {method: log}}` keeps other methods' logs), other
      fields are replaced.

  Returns:
    The merged records, as written.

  Raises:
    ValueError: two new records share a key, or the existing file is not a
      list of records (it is then left untouched).
    OutputLocked: another writer holds `<path>.lock`.
  """
  path = pathlib.Path(path)
  new = json.loads(json.dumps(list(records)))
  keys = [record_key(r, key) for r in new]
  seen = {}
  for k, r in zip(keys, new):
    if k in seen:
      raise ValueError(
        f"two records share the key {dict(zip(key, map(json.loads, k)))} "
        f"(key fields {list(key)}): {seen[k]} and {r}"
      )
    seen[k] = r
  with _flock(path.with_name(path.name + ".lock"), f"results file {path}"):
    old, rest = _read(path)
    merged, placed = [], set()
    for r in old:
      k = record_key(r, key)
      if k not in seen:
        merged.append(r)
      elif k not in placed:
        merged.append(seen[k])
        placed.add(k)
    merged += [r for k, r in zip(keys, new) if k not in placed]
    if extra is not None or rest is not None:
      body = {"records": merged, **_merge_extra(rest, extra or {})}
    else:
      body = merged
    write_json_atomic(path, body)
  return merged


def read_records(path: str | os.PathLike) -> list[dict]:
  """The records stored at `path` (`[]` when the file does not exist).

  Raises:
    ValueError: the file is not valid JSON or holds no list of records.
  """
  return _read(pathlib.Path(path))[0]
