"""A grid of VQA examples with their questions and answers, as a PNG."""

import pathlib
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jaxexit import checks  # noqa: E402
from jaxexit.data.vqa_set import VQASet  # noqa: E402


def render_examples_png(
  vqa_set: VQASet, path: str | pathlib.Path, n: int = 8, *, columns: int = 4
) -> pathlib.Path:
  """Writes the first `n` examples, each titled "question -> answer".

  Pixels are shown unsmoothed, so small objects stay sharp.

  Args:
    vqa_set: the examples.
    path: the PNG file to write (parent folders are created).
    n: how many examples, in [1, len(vqa_set)].
    columns: images per row.

  Returns:
    `path`, as a Path.

  Raises:
    ValueError: `n` or `columns` out of range.
  """
  checks.positive_int("n", n)
  checks.positive_int("columns", columns)
  if n > len(vqa_set):
    raise ValueError(f"n must be <= len(vqa_set)={len(vqa_set)}; got n={n}")
  columns = min(columns, n)
  rows = -(-n // columns)
  fig, axes = plt.subplots(
    rows, columns, squeeze=False, figsize=(2.6 * columns, 3.0 * rows)
  )
  for i, ax in enumerate(axes.flat):
    ax.axis("off")
    if i >= n:
      continue
    ax.imshow(vqa_set.images[i], interpolation="nearest")
    title = f"{' '.join(vqa_set.question(i))} -> {vqa_set.answer(i)}"
    ax.set_title("\n".join(textwrap.wrap(title, 28)), fontsize=8)
  fig.tight_layout()
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
