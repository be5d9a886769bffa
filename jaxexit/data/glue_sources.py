"""Where a GLUE split file is read from: data dir, bundled copy, or a fetch.

`glue_split_file` tries, in order:

  1. the data dir (`jaxexit.data.location.require_file`): used as is;
  2. the copy bundled with jaxexit (`jaxexit.data.bundled`; SST-2 only),
     announced with one line on stderr;
  3. unless `$JAXEXIT_OFFLINE` is set, the official GLUE zip fetched into
     the data dir (`jaxexit.data.glue_fetch`), then the data dir again;
  4. otherwise `DataNotFoundError`: the paths tried, how to obtain the data,
     and why nothing was bundled or fetched.
"""

import os
from pathlib import Path

from jaxexit.data import bundled, fetch, glue_fetch, location


def _fetch_failure(task: str, data_dir, progress: bool) -> str | None:
  """Fetches `task` into the data dir; None on success, else the reason."""
  if fetch.offline():
    return (
      f"Not fetched: ${fetch.OFFLINE_ENV_VAR} is set (unset it to "
      f"download the official GLUE zip into the data dir)."
    )
  if task not in glue_fetch.GLUE_ZIPS:
    return "Not fetched: GLUE has no zip for this task (see above)."
  try:
    glue_fetch.fetch_glue(task, data_dir=data_dir, progress=progress)
  except fetch.FetchError as e:
    return (
      f"Fetch failed ({type(e).__name__}): {e}\nSet "
      f"${fetch.OFFLINE_ENV_VAR}=1 to skip fetching."
    )
  return None


def glue_split_file(
  task: str,
  split: str,
  *,
  data_dir: str | os.PathLike | None = None,
  progress: bool = True,
) -> Path:
  """The file of one GLUE split, found or obtained in the order above.

  Args:
    task: a GLUE task name (see `jaxexit.data.location.dataset_spec`).
    split: a split of that task ("train", "dev", "dev_matched", ...).
    data_dir: the data dir (None: `$JAXEXIT_DATA`, then the default).
    progress: show a progress bar while fetching.

  Returns:
    `<data dir>/glue/<TASK>/<split>.tsv`, or the bundled `<split>.tsv.xz`.

  Raises:
    ValueError: unknown task or split.
    DataNotFoundError: none of the sources has the file; the message says
      what was tried and why each source failed.
  """
  spec = location.dataset_spec(task)
  try:
    return location.require_file(spec.name, split, data_dir=data_dir)
  except location.DataNotFoundError as missing:
    copy = bundled.glue_file(spec.name, split)
    if copy is not None:
      bundled.notice(
        f"{spec.name} {split}: not in {bundled.missing_from(task, data_dir)}"
        f"; using the copy bundled with jaxexit ({bundled.SOURCES})"
      )
      return copy
    reason = _fetch_failure(spec.name, data_dir, progress)
    if reason is None:
      return location.require_file(spec.name, split, data_dir=data_dir)
    raise location.DataNotFoundError(
      f"{missing}\nNo copy of {spec.name!r} is bundled with jaxexit.\n{reason}"
    ) from missing
