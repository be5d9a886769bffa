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
stacked on the leading L axis of `model.layers`.
"""

import os
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxexit.models.hf_weights import read_hf_config, read_state_dict
from jaxexit.models.mamba import MambaConfig, MambaLM
from jaxexit.models.mamba2 import Mamba2Config, Mamba2LM
from jaxexit.models.ssm_lm import MambaLMBase

StateDict = Mapping[str, np.ndarray]

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


def _normalise_names(state: StateDict) -> dict[str, np.ndarray]:
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


def _load(model: MambaLMBase, state: StateDict, cls: type) -> None:
  if not isinstance(model, cls):
    raise ValueError(f"expected a {cls.__name__}; got {type(model).__name__}")
  state = _normalise_names(state)
  if problems := _problems(model, state):
    raise ValueError(
      f"checkpoint does not match {cls.__name__}: " + "; ".join(problems)
    )
  for var, names, kind, stacked in _layout(model):
    arrays = [_KINDS[kind][1](np.asarray(state[n])) for n in names]
    value = np.stack(arrays) if stacked else arrays[0]
    # `set_value`, not `var[...] =`: the variable may still be abstract.
    var.set_value(jnp.asarray(value, dtype=var.dtype))


def load_mamba_state_dict(model: MambaLM, state: StateDict) -> None:
  """Copies an HF `MambaForCausalLM` state dict into `model` in place.

  Args:
    model: a `MambaLM` whose config matches the checkpoint.
    state: `{HF name: array}` (see `read_state_dict`).

  Raises:
    ValueError: naming every missing, unexpected or mis-shaped tensor.
  """
  _load(model, state, MambaLM)


def load_mamba2_state_dict(model: Mamba2LM, state: StateDict) -> None:
  """Copies an HF `Mamba2ForCausalLM` state dict into `model` in place.

  Args:
    model: a `Mamba2LM` whose config matches the checkpoint.
    state: `{HF name: array}` (see `read_state_dict`).

  Raises:
    ValueError: naming every missing, unexpected or mis-shaped tensor.
  """
  _load(model, state, Mamba2LM)


def mamba_from_pretrained(
  path: str | os.PathLike, **overrides
) -> MambaLM | Mamba2LM:
  """Builds a Mamba or Mamba-2 LM from a Hugging Face folder.

  The model is built abstractly (`nnx.eval_shape`) and filled from the
  checkpoint, so no random initialisation is paid for.

  Args:
    path: folder with `config.json` (model_type "mamba" or "mamba2") and a
      checkpoint (`model.safetensors`, sharded or not; see
      `hf_weights.read_state_dict`).
    **overrides: config fields to override (`dtype`, `param_dtype`, ...).

  Raises:
    ValueError: no config.json, an unsupported model_type or config, or a
      checkpoint that does not match (see `load_mamba_state_dict`).
  """
  path = os.fspath(path)
  hf = read_hf_config(path)
  model_type = hf.get("model_type")
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
  load(model, read_state_dict(path))
  return model
