"""Hugging Face Mamba / Mamba-2 checkpoints → `MambaLM` / `Mamba2LM`.

Tensor names are those of transformers' `MambaForCausalLM` and
`Mamba2ForCausalLM` (`modeling_mamba.py`, `modeling_mamba2.py`):
`backbone.embeddings.weight` (old checkpoints: `backbone.embedding.weight`),
`backbone.layers.{i}.norm.weight`, `backbone.layers.{i}.mixer.{in_proj,
conv1d, x_proj, dt_proj, out_proj}.{weight,bias}`, `...mixer.A_log`,
`...mixer.D`, Mamba-2's `...mixer.dt_bias` and `...mixer.norm.weight`,
`backbone.norm_f.weight` and `lm_head.weight` (absent or equal to the
embeddings when tied). A checkpoint of the bare `MambaModel` (no
`backbone.` prefix) loads too.

Layout changes: torch `nn.Linear.weight` is [out, in], NNX `kernel` is
[in, out]; `conv1d.weight` [C, 1, W] becomes [C, W]; per-layer tensors are
stacked on the leading L axis of `model.layers`. All three are done on
`LazyTensor`s, so with a mesh each device reads only its shard of every
tensor (`jaxexit.models.sharded_load`, family "mamba" or "mamba2").
"""

import os
from collections.abc import Mapping

import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxexit.models import sharded_load
from jaxexit.models.checkpoint_files import read_hf_config, read_state_dict
from jaxexit.models.lazy_tensors import LazyTensor, from_array, stack
from jaxexit.models.mamba import MambaConfig, MambaLM
from jaxexit.models.mamba2 import Mamba2Config, Mamba2LM
from jaxexit.models.ssm_lm import MambaLMBase
from jaxexit.sharding.rules import Rules

StateDict = Mapping[str, np.ndarray | LazyTensor]

# kind -> (HF shape from ours, ours from the HF array).
_KINDS = {
  "same": (lambda s: s, lambda a: a),
  "linear": (lambda s: s[::-1], lambda a: a.T),
  "conv": (lambda s: (s[0], 1, s[1]), lambda a: a[:, 0]),
}


def _block_name(path: tuple) -> tuple[str, str]:
  """Our parameter path inside a block -> (HF name suffix, kind)."""
  *parents, leaf = (str(p) for p in path)
  if leaf == "kernel":
    return ".".join(parents + ["weight"]), "linear"
  if leaf == "scale":
    return ".".join(parents + ["weight"]), "same"
  if parents[-1:] == ["conv1d"] and leaf == "weight":
    return ".".join(parents + [leaf]), "conv"
  return ".".join(parents + [leaf]), "same"


def _layout(
  model: MambaLMBase,
) -> list[tuple[nnx.Variable, list[str], str, bool]]:
  """(variable, HF names, kind, stacked) for every parameter of `model`."""
  rows = [
    (model.embeddings.embedding, ["backbone.embeddings.weight"], "same", False),
    (model.norm_f.scale, ["backbone.norm_f.weight"], "same", False),
  ]
  if model.lm_head_linear is not None:
    rows.append(
      (model.lm_head_linear.kernel, ["lm_head.weight"], "linear", False)
    )
  for path, _ in nnx.to_flat_state(nnx.state(model.layers, nnx.Param)):
    var = model.layers
    for part in path:
      var = getattr(var, part)
    name, kind = _block_name(path)
    rows.append(
      (
        var,
        [f"backbone.layers.{i}.{name}" for i in range(model.num_layers)],
        kind,
        True,
      )
    )
  return rows


def hf_tensor_shapes(model: MambaLMBase) -> dict[str, tuple[int, ...]]:
  """`{HF tensor name: shape}` that a checkpoint for `model` must hold
  (`lm_head.weight` only when untied). Works on an abstract model
  (`nnx.eval_shape`), so paper-size layouts can be checked cheaply."""
  out = {}
  for var, names, kind, stacked in _layout(model):
    shape = _KINDS[kind][0](tuple(var.shape[1:] if stacked else var.shape))
    out.update({n: shape for n in names})
  return out


def _normalise_names(state: StateDict) -> StateDict:
  """Adds the `backbone.` prefix of a bare `MambaModel` checkpoint and
  renames the old `embedding.` spelling (HF `MambaModel.load_hook`)."""
  state = dict(state)
  if not any(k.startswith("backbone.") for k in state):
    state = {
      k if k.startswith("lm_head.") else "backbone." + k: v
      for k, v in state.items()
    }
  if (
    "backbone.embedding.weight" in state
    and "backbone.embeddings.weight" not in state
  ):
    state["backbone.embeddings.weight"] = state.pop("backbone.embedding.weight")
  return state


def _listing(names) -> str:
  names = sorted(names)
  more = f" and {len(names) - 8} more" if len(names) > 8 else ""
  return ", ".join(repr(n) for n in names[:8]) + more


def _problems(model: MambaLMBase, state: dict) -> list[str]:
  """Every mismatch between `state` and `model`, as readable strings."""
  problems = []
  expected = hf_tensor_shapes(model)
  extra = set(state) - set(expected)
  if model.lm_head_linear is None and "lm_head.weight" in extra:
    extra.discard("lm_head.weight")
    emb = state.get("backbone.embeddings.weight")
    if emb is None or not np.array_equal(
      np.asarray(state["lm_head.weight"]), np.asarray(emb)
    ):
      problems.append(
        "'lm_head.weight' differs from "
        "'backbone.embeddings.weight' but the config ties them "
        "(tie_embeddings=True)"
      )
  if extra:
    problems.append(f"unexpected tensors {_listing(extra)}")
  if missing := set(expected) - set(state):
    problems.append(f"missing tensors {_listing(missing)}")
  for name, want in expected.items():
    if name in state and tuple(np.shape(state[name])) != want:
      problems.append(
        f"tensor {name!r} has shape "
        f"{tuple(np.shape(state[name]))}; expected {want}"
      )
  return problems


def _load(model: MambaLMBase, state: StateDict, cls: type, mesh, rules):
  if not isinstance(model, cls):
    raise ValueError(f"expected a {cls.__name__}; got {type(model).__name__}")
  state = _normalise_names(state)
  if problems := _problems(model, state):
    raise ValueError(
      f"checkpoint does not match {cls.__name__}: " + "; ".join(problems)
    )
  pairs = []
  for var, names, kind, stacked in _layout(model):
    arrays = [_KINDS[kind][1](from_array(state[n])) for n in names]
    pairs.append((var, stack(arrays) if stacked else arrays[0]))
  family = "mamba" if cls is MambaLM else "mamba2"
  sharded_load.assign(model, pairs, family=family, mesh=mesh, rules=rules)


def load_mamba_state_dict(
  model: MambaLM,
  state: StateDict,
  *,
  mesh: Mesh | None = None,
  rules: Rules | None = None,
) -> None:
  """Copies an HF `MambaForCausalLM` state dict into `model` in place.

  Args:
    model: a `MambaLM` (possibly abstract) whose config matches the
      checkpoint.
    state: `{HF name: array or LazyTensor}` (see `read_state_dict`).
    mesh: None: every tensor whole on the default device. A mesh: every
      tensor sharded by the "mamba" family's logical axes and `rules`, each
      device reading only its shard (`sharded_load.assign`).
    rules: logical axis -> mesh axes (None: the default rules).

  Raises:
    ValueError: naming every missing, unexpected or mis-shaped tensor.
  """
  _load(model, state, MambaLM, mesh, rules)


def load_mamba2_state_dict(
  model: Mamba2LM,
  state: StateDict,
  *,
  mesh: Mesh | None = None,
  rules: Rules | None = None,
) -> None:
  """Copies an HF `Mamba2ForCausalLM` state dict into `model` in place.

  Args:
    model: a `Mamba2LM` (possibly abstract) whose config matches the
      checkpoint.
    state: `{HF name: array or LazyTensor}` (see `read_state_dict`).
    mesh, rules: as for `load_mamba_state_dict` (family "mamba2").

  Raises:
    ValueError: naming every missing, unexpected or mis-shaped tensor.
  """
  _load(model, state, Mamba2LM, mesh, rules)


def mamba_from_pretrained(
  path: str | os.PathLike,
  *,
  mesh: Mesh | None = None,
  rules: Rules | None = None,
  **overrides,
) -> MambaLM | Mamba2LM:
  """Builds a Mamba or Mamba-2 LM from a Hugging Face folder.

  The model is built abstractly (`nnx.eval_shape`) and filled from the
  checkpoint, read lazily, so no random initialisation is paid for.

  Args:
    path: folder with `config.json` (model_type "mamba" or "mamba2") and a
      checkpoint (`model.safetensors`, sharded or not; see
      `checkpoint_files.read_state_dict`).
    mesh: shard the parameters over this mesh, each device reading only
      its shards (see `load_mamba_state_dict`); None: one device.
    rules: logical axis -> mesh axes with `mesh` (None: the defaults).
    **overrides: config fields to override (`dtype`, `param_dtype`, ...);
      without `param_dtype` the parameters keep the checkpoint's dtype
      (`sharded_load.checkpoint_dtype`).

  Raises:
    ValueError: no config.json, an unsupported model_type or config, or a
      checkpoint that does not match (see `load_mamba_state_dict`).
  """
  path = os.fspath(path)
  hf = read_hf_config(path)
  model_type = hf.get("model_type")
  if model_type in ("mamba", "mamba2"):
    state = read_state_dict(path, lazy=True)
    overrides.setdefault("param_dtype", sharded_load.checkpoint_dtype(state))
  if model_type == "mamba":
    cfg, cls, load = (
      MambaConfig.from_hf(hf, **overrides),
      MambaLM,
      load_mamba_state_dict,
    )
  elif model_type == "mamba2":
    cfg, cls, load = (
      Mamba2Config.from_hf(hf, **overrides),
      Mamba2LM,
      load_mamba2_state_dict,
    )
  else:
    raise ValueError(
      f"config.json model_type={model_type!r}; expected 'mamba' or 'mamba2'"
    )
  model = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))
  load(model, state, mesh=mesh, rules=rules)
  return model
