"""Mixed precision and rematerialisation for training large models.

A `Precision` says in which dtype the parameters are stored and used
(`param_dtype`), in which the model computes (`compute_dtype`, the
model config's `dtype`), whether the optimizer keeps a float32 master
copy of low-precision parameters, and the per-block rematerialisation
policy (`jaxexit.nn.remat`). `jaxexit.train.train(precision=...)` applies
it; the default `Precision()` is plain float32 and changes nothing.

The usual settings (`PRECISIONS`):

  float32         float32 everywhere (the default).
  bf16_compute    float32 parameters and optimizer, bfloat16 activations
                  and matmuls: the model casts its weights per call, the
                  gradients come back in float32.
  bf16            bfloat16 parameters and activations; the optimizer
                  keeps a float32 master copy and float32 moments,
                  applies each update to the master and rounds it into
                  the parameters. With Adam that is 14 bytes per
                  parameter (2 + 4 + 8) against float32's 12: it saves
                  activation memory and halves the weights an FSDP
                  all-gather moves, not optimizer memory.
  bf16_f32_state  bfloat16 parameters and activations, float32 moments,
                  no master copy (10 bytes per parameter with Adam); the
                  update is added to the bfloat16 parameters in float32
                  and rounded, so updates below bfloat16's resolution
                  are lost.

The model must be built in the compute dtype: pass
`**precision.model_overrides()` to its config (`dataclasses.replace`);
`train` refuses a model whose `cfg.dtype` differs.
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxexit import checks
from jaxexit.nn.remat import REMAT_POLICIES
from jaxexit.typing import PyTree

DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Precision:
  """Parameter and compute dtypes, master weights and remat of a run.

  Attributes:
    param_dtype: dtype of the model's floating parameters, one of
      `DTYPES`; below float32 the optimizer runs in float32.
    compute_dtype: dtype of the model's activations and matmuls (its
      config's `dtype`; see `model_overrides`).
    master_weights: keep a float32 copy of the parameters in the
      optimizer state (needs `param_dtype` below float32).
    remat: per-block rematerialisation policy, a key of
      `jaxexit.nn.remat.REMAT_POLICIES` ("full", "dots"), or None.
  """

  param_dtype: str = "float32"
  compute_dtype: str = "float32"
  master_weights: bool = False
  remat: str | None = None

  def __post_init__(self):
    checks.one_of("Precision.param_dtype", self.param_dtype, DTYPES)
    checks.one_of("Precision.compute_dtype", self.compute_dtype, DTYPES)
    if self.remat is not None:
      checks.one_of("Precision.remat", self.remat, tuple(REMAT_POLICIES))
    if self.master_weights and self.param_dtype == "float32":
      raise ValueError(
        "Precision.master_weights=True needs a param_dtype below float32 "
        "(the parameters are the master copy already); got "
        f"param_dtype={self.param_dtype!r}"
      )

  @property
  def low_precision_params(self) -> bool:
    """Whether the parameters are stored below float32."""
    return self.param_dtype != "float32"

  def model_overrides(self) -> dict[str, Any]:
    """`dtype` and `param_dtype` for a model config (`dataclasses.replace(
    cfg, **precision.model_overrides())`)."""
    return {
      "dtype": jnp.dtype(self.compute_dtype),
      "param_dtype": jnp.dtype(self.param_dtype),
    }


PRECISIONS = {
  "float32": Precision(),
  "bf16_compute": Precision(compute_dtype="bfloat16"),
  "bf16": Precision(
    param_dtype="bfloat16", compute_dtype="bfloat16", master_weights=True
  ),
  "bf16_f32_state": Precision(param_dtype="bfloat16", compute_dtype="bfloat16"),
}


def _float32(tree: PyTree) -> PyTree:
  """Floating leaves cast to float32 (others unchanged)."""
  return jax.tree.map(
    lambda x: (
      x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x
    ),
    tree,
  )


class Float32State(NamedTuple):
  """`float32_optimizer`'s state: the master copy (or `()`) and `tx`'s."""

  master: PyTree
  inner: optax.OptState


def float32_optimizer(
  tx: optax.GradientTransformation, *, master_weights: bool
) -> optax.GradientTransformation:
  """`tx` run in float32 for parameters stored in a lower precision.

  The gradients (and parameters) are cast to float32 before `tx`, so its
  moments are float32. With `master_weights`, a float32 copy of the
  parameters is kept in the state: `tx` updates the copy, and the update
  returned is `copy - params` in float32, which `optax.apply_updates`
  adds in float32 and rounds into the parameters' dtype, so the
  parameters are the rounded master copy.

  Args:
    tx: the optimizer (e.g. `jaxexit.train.build_optimizer(cfg)`).
    master_weights: keep the float32 master copy.

  Returns:
    The wrapped transformation (its `update` needs `params`).
  """

  def init(params):
    params = _float32(params)
    return Float32State(params if master_weights else (), tx.init(params))

  def update(grads, state, params=None):
    if params is None:
      raise ValueError("float32_optimizer's update needs params")
    base = state.master if master_weights else _float32(params)
    updates, inner = tx.update(_float32(grads), state.inner, base)
    if not master_weights:
      return updates, Float32State((), inner)
    master = optax.apply_updates(base, updates)
    delta = jax.tree.map(lambda m, p: m - p.astype(m.dtype), master, params)
    return delta, Float32State(master, inner)

  return optax.GradientTransformation(init, update)


def cast_params(model_state: nnx.State, dtype: str) -> nnx.State:
  """`model_state` with its floating `nnx.Param`s cast to `dtype`."""

  def cast(v):
    if isinstance(v, nnx.Param) and jnp.issubdtype(v.dtype, jnp.floating):
      return v.replace(value=v[...].astype(dtype))
    return v

  return jax.tree.map(
    cast, model_state, is_leaf=lambda x: isinstance(x, nnx.Variable)
  )


def check_compute_dtype(model: nnx.Module, precision: Precision) -> None:
  """Raises if `model.cfg.dtype` (where it has one) is not the compute
  dtype, naming both and how to build the model."""
  dtype = getattr(getattr(model, "cfg", None), "dtype", None)
  if dtype is not None and jnp.dtype(dtype) != jnp.dtype(
    precision.compute_dtype
  ):
    raise ValueError(
      f"Precision.compute_dtype={precision.compute_dtype!r} but the model "
      f"computes in {jnp.dtype(dtype).name} (model.cfg.dtype); build it "
      "with dataclasses.replace(cfg, **precision.model_overrides())"
    )
