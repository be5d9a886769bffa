"""Rules: logical names to specs, the replication fallbacks and their log."""

import logging

import pytest
from jax.sharding import PartitionSpec as P

from jaxexit.sharding import DEFAULT_RULES, logical_spec
from jaxexit.sharding.rules import check_rules

MESH = {"data": 2, "fsdp": 2, "tensor": 8}
RULES = check_rules(DEFAULT_RULES, tuple(MESH))


def test_default_rules_give_fsdp_and_tensor_specs():
  spec = lambda axes, shape: logical_spec(axes, shape, MESH, RULES, "p")
  assert spec(("embed", "heads"), (32, 64)) == P("fsdp", "tensor")
  assert spec(("vocab", "embed"), (128, 32)) == P("tensor", "fsdp")
  assert spec(("layers", "mlp", "state"), (2, 64, 8)) == P(None, "tensor", None)
  assert spec(("batch", None), (8, 3)) == P(("data", "fsdp"), None)
  assert spec(("conv_in", "spatial"), (3, 3)) == P(None, None)


def test_indivisible_dimension_is_replicated_and_logged_once(caplog):
  pattern = "test/indivisible/kernel"
  with caplog.at_level(logging.WARNING, logger="jaxexit.sharding"):
    for _ in range(3):  # e.g. the same row over three layers
      spec = logical_spec(("embed", "heads"), (32, 12), MESH, RULES, pattern)
      assert spec == P("fsdp", None)
    # A new reason for the same pattern is logged; the old one is not.
    spec = logical_spec(("embed", "heads"), (3, 12), MESH, RULES, pattern)
    assert spec == P(None, None)
  messages = [r.getMessage() for r in caplog.records]
  assert len(messages) == 2, messages
  assert (
    "dimension 1 ('heads'): size 12 is not divisible by mesh axes "
    in (messages[0])
  )
  assert "('tensor',) of 8 devices" in messages[0] and pattern in messages[0]
  assert "dimension 0 ('embed'): size 3" in messages[1]


def test_mesh_axis_used_twice_and_rank_mismatch_are_replicated(caplog):
  rules = check_rules({"embed": "fsdp", "mlp": "fsdp"}, tuple(MESH))
  with caplog.at_level(logging.WARNING, logger="jaxexit.sharding"):
    spec = logical_spec(("embed", "mlp"), (8, 8), MESH, rules, "test/twice")
    assert spec == P("fsdp", None)
    spec = logical_spec(("embed", "mlp"), (8,), MESH, rules, "test/rank")
    assert spec == P()
  text = caplog.text
  assert "mesh axes ('fsdp',) already shard another dimension" in text
  assert "shape (8,) does not have one dimension per logical axis" in text


def test_rule_with_unknown_mesh_axis_is_an_error():
  with pytest.raises(ValueError, match=r"'mlp' -> 'pipe'.*\['pipe'\]"):
    check_rules({"embed": "fsdp", "mlp": "pipe"}, tuple(MESH))
  assert check_rules({"embed": None, "batch": ("data",)}, tuple(MESH)) == {
    "embed": (),
    "batch": ("data",),
  }
