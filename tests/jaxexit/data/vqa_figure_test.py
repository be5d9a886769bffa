"""Tests for jaxexit.data.vqa_figure: the example grid PNG."""

import pytest
from PIL import Image

from jaxexit.data.shapes_vqa import ShapesVQAConfig, make_shapes_vqa
from jaxexit.data.vqa_figure import render_examples_png


def test_writes_a_png(tmp_path):
  data = make_shapes_vqa(ShapesVQAConfig(image_size=32), 6, 0)
  path = render_examples_png(
    data, tmp_path / "sub" / "examples.png", n=5, columns=3
  )
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  with Image.open(path) as image:
    assert image.size[0] > image.size[1] > 100  # 2 rows of 3
  with pytest.raises(ValueError, match="n=7"):
    render_examples_png(data, tmp_path / "x.png", n=7)
