"""infer_family over every family's variants; default_rules per mesh."""

import jax
import pytest

from jaxexit.sharding import DEFAULT_RULES, default_rules, infer_family
from tests.jaxexit.sharding.families_test import VARIANTS, _abstract_state

# The MLP exits and the Mamba exits both have up/down projections, named
# differently: a caller passes family= there.
AMBIGUOUS = {("dynamax_mlp_exits", "mlp")}


@pytest.mark.parametrize("family", sorted(VARIANTS))
def test_each_variant_infers_its_family(family):
  for variant, build in VARIANTS[family].items():
    state = _abstract_state(build)
    if (family, variant) in AMBIGUOUS:
      with pytest.raises(ValueError, match="dynamax_mamba_exits.*family="):
        infer_family(state)
    else:
      assert infer_family(state) == family, variant


def test_no_family_fits_names_the_first_array():
  state = {"w": jax.ShapeDtypeStruct((4, 2), "float32")}
  with pytest.raises(ValueError, match=r"first 'w'\): families \[\] fit"):
    infer_family(state)


def test_default_rules_drop_the_axes_a_mesh_lacks():
  assert default_rules(("data", "fsdp", "tensor")) == dict(DEFAULT_RULES)
  assert default_rules(("data",)) == {
    "batch": "data",
    "embed": None,
    "heads": None,
    "kv_heads": None,
    "mlp": None,
    "vocab": None,
  }
