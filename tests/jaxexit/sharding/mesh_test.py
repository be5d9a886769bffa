"""make_mesh: the command-line form, -1, and errors naming the sizes."""

import jax
import pytest
from jax.sharding import AxisType

from jaxexit.sharding import MESH_AXES, make_mesh, parse_mesh_axes
from jaxexit.sharding.mesh import mesh_shape


def test_parse_mesh_axes():
  assert parse_mesh_axes("data=2,fsdp=2,tensor=2") == {
    "data": 2,
    "fsdp": 2,
    "tensor": 2,
  }
  assert parse_mesh_axes(" fsdp = -1 , tensor=2") == {"fsdp": -1, "tensor": 2}
  for text, entry in (("data=2,fsdp", "'fsdp'"), ("data=two", "'data=two'")):
    with pytest.raises(ValueError, match=f"mesh entry {entry} .* axis=size"):
      parse_mesh_axes(text)
  with pytest.raises(ValueError, match="'data' is given twice"):
    parse_mesh_axes("data=2,data=4")


def test_mesh_shape_fills_missing_axes_and_the_rest():
  assert mesh_shape({"data": 2, "fsdp": 2, "tensor": 2}, 8) == {
    "data": 2,
    "fsdp": 2,
    "tensor": 2,
  }
  assert mesh_shape("fsdp=-1,tensor=2", 8) == {
    "data": 1,
    "fsdp": 4,
    "tensor": 2,
  }
  assert mesh_shape({"tensor": 8}, 8) == {"data": 1, "fsdp": 1, "tensor": 8}


@pytest.mark.parametrize(
  "axes, message",
  [
    ({"data": 2, "fsdp": 2}, r"sizes \{'data': 2, 'fsdp': 2\} multiply to 4, "),
    ({"data": 2, "pipeline": 4}, r"unknown mesh axis \['pipeline'\]"),
    ({"data": -1, "fsdp": -1}, "only one mesh axis may be -1"),
    ({"data": -1, "tensor": 3}, "take 3 devices, which does not divide the 8"),
    ({"data": 0, "fsdp": 8}, r"sizes \{'data': 0\} must be >= 1 or -1"),
  ],
)
def test_mesh_shape_errors_name_the_sizes(axes, message):
  with pytest.raises(ValueError, match=message):
    mesh_shape(axes, 8)


def test_make_mesh_has_three_auto_axes():
  n = len(jax.devices())
  for axes in (None, f"data={n}", {"fsdp": -1}):
    mesh = make_mesh(axes)
    assert mesh.axis_names == MESH_AXES
    assert mesh.devices.size == n
    assert set(mesh.axis_types) == {AxisType.Auto}
  assert make_mesh().shape["data"] == n
  with pytest.raises(ValueError, match=f"not to the {n} device"):
    make_mesh({"data": n + 1})
