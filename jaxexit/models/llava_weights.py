"""Hugging Face LLaVA (and CLIP vision) checkpoints ↔ `LlavaLM` parameters.

Tensor names. transformers 5 saves a `LlavaForConditionalGeneration` as

* `language_model.` + the `LlamaForCausalLM` names (`model.embed_tokens.
  weight`, `model.layers.{i}.*`, `model.norm.weight`, `lm_head.weight`;
  mapped by `jaxexit.models.llama_weights`),
* `vision_tower.` + the `CLIPVisionModel` names (`embeddings.
  class_embedding`, `embeddings.patch_embedding.weight`, `embeddings.
  position_embedding.weight`, `pre_layrnorm.*`, `encoder.layers.{i}.
  {self_attn.{q,k,v,out}_proj, layer_norm1, mlp.fc1, mlp.fc2, layer_norm2}.
  *`, `post_layernorm.*`),
* `multi_modal_projector.linear_{1,2}.{weight,bias}`,

and that is what `export_llava_state_dict` writes (transformers loads it,
tests). The loader also reads the other spellings transformers maps onto
these: llava-hf's published files (transformers 4.3x) nest the tower as
`vision_tower.vision_model.*`, and transformers ≥ 4.52 state dicts use
`model.language_model.*`, `lm_head.weight`, `model.vision_tower.*` and
`model.multi_modal_projector.*`.

Layout changes: torch `nn.Linear.weight` is [out, in], NNX `kernel` is
[in, out]; the patch convolution's weight [D, 3, p, p] becomes the
[p · p · 3, D] kernel of `ClipVision.patch_embedding` (rows over patch row,
column, channel). Files are read by `checkpoint_files.read_state_dict`
(safetensors, sharded or not, no torch needed), lazily: with a mesh, each
device reads only its shard of every tensor (`jaxexit.models.sharded_load`,
family "llava"; the small patch kernel, whose reshape mixes dimensions,
is read whole).
"""

import math
import os
from collections.abc import Callable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from jax.typing import DTypeLike

from jaxexit.models import sharded_load
from jaxexit.models.checkpoint_files import read_hf_config, read_state_dict
from jaxexit.models.clip_vision import ClipVision
from jaxexit.models.lazy_tensors import LazyTensor, computed, from_array
from jaxexit.models.llama_weights import hf_layout as llama_layout
from jaxexit.models.llama_weights import module_variable as llama_variable
from jaxexit.models.llava import LlavaConfig, LlavaLM
from jaxexit.sharding.rules import Rules

StateDict = Mapping[str, np.ndarray | LazyTensor]
# (variable, HF name, kind of layout change: a key of _KINDS).
Row = tuple[nnx.Variable, str, str]


def _patch_to_ours(w):
  if isinstance(w, LazyTensor):  # the reshape mixes dims: read it whole
    shape = (w.size // w.shape[0], w.shape[0])
    return computed(lambda: _patch_to_ours(np.asarray(w)), shape, w.dtype)
  return w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])


def _patch_to_hf(k: np.ndarray) -> np.ndarray:
  p = math.isqrt(k.shape[0] // 3)
  return k.reshape(p, p, 3, -1).transpose(3, 2, 0, 1)


def _patch_hf_shape(s: tuple) -> tuple:
  p = math.isqrt(s[0] // 3)
  return (s[1], 3, p, p)


# kind -> (HF shape from ours, ours from HF, HF from ours).
_KINDS: dict[str, tuple[Callable, Callable, Callable]] = {
  "same": (lambda s: s, lambda a: a, lambda a: a),
  "linear": (lambda s: s[::-1], lambda a: a.T, lambda a: a.T),
  "patch": (_patch_hf_shape, _patch_to_ours, _patch_to_hf),
}

# Older spellings -> the transformers 5 file names (first match wins).
_RENAMES = (
  ("model.language_model.", "language_model.model."),
  ("lm_head.", "language_model.lm_head."),
  ("model.vision_tower.vision_model.", "vision_tower."),
  ("model.vision_tower.", "vision_tower."),
  ("vision_tower.vision_model.", "vision_tower."),
  ("model.multi_modal_projector.", "multi_modal_projector."),
)

# Buffers some checkpoints carry; both are recomputed.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "embeddings.position_ids")


def _linear(module: nnx.Linear, name: str) -> list[Row]:
  return [
    (module.kernel, f"{name}.weight", "linear"),
    (module.bias, f"{name}.bias", "same"),
  ]


def _norm(module: nnx.LayerNorm, name: str) -> list[Row]:
  return [
    (module.scale, f"{name}.weight", "same"),
    (module.bias, f"{name}.bias", "same"),
  ]


def _clip_rows(model: ClipVision, prefix: str) -> list[Row]:
  """Rows of a `ClipVision` under HF `CLIPVisionModel` names."""
  rows = [
    (model.class_embedding, "embeddings.class_embedding", "same"),
    (
      model.patch_embedding.kernel,
      "embeddings.patch_embedding.weight",
      "patch",
    ),
    (model.position_embedding, "embeddings.position_embedding.weight", "same"),
  ]
  rows += _norm(model.pre_layrnorm, "pre_layrnorm")
  for i, layer in enumerate(model.layers):
    hf = f"encoder.layers.{i}."
    for ours, theirs in (
      ("q_proj", "self_attn.q_proj"),
      ("k_proj", "self_attn.k_proj"),
      ("v_proj", "self_attn.v_proj"),
      ("out_proj", "self_attn.out_proj"),
      ("fc1", "mlp.fc1"),
      ("fc2", "mlp.fc2"),
    ):
      rows += _linear(getattr(layer, ours), hf + theirs)
    rows += _norm(layer.layer_norm1, hf + "layer_norm1")
    rows += _norm(layer.layer_norm2, hf + "layer_norm2")
  rows += _norm(model.post_layernorm, "post_layernorm")
  return [(var, prefix + name, kind) for var, name, kind in rows]


def _llava_rows(model: LlavaLM) -> list[Row]:
  """Rows of every `LlavaLM` parameter under transformers 5 file names."""
  rows = _clip_rows(model.vision, "vision_tower.")
  for name in ("linear_1", "linear_2"):
    rows += _linear(
      getattr(model.projector, name), f"multi_modal_projector.{name}"
    )
  rows += [
    (
      llama_variable(model.lm, attr),
      "language_model." + name,
      "linear" if transpose else "same",
    )
    for attr, name, transpose in llama_layout(model.lm.cfg)
  ]
  return rows


def _hf_shape(var: nnx.Variable, kind: str) -> tuple[int, ...]:
  return tuple(_KINDS[kind][0](tuple(var.shape)))


def _load(
  model: nnx.Module,
  rows: list[Row],
  state: StateDict,
  what: str,
  family: str,
  mesh: Mesh | None,
  rules: Rules | None,
) -> None:
  """Checks every tensor, then copies all of them (none on error)."""
  problems, pairs = [], []
  for var, name, kind in rows:
    if name not in state:
      problems.append(f"missing tensor {name!r}")
      continue
    value = from_array(state[name])
    if value.shape != (want := _hf_shape(var, kind)):
      problems.append(
        f"tensor {name!r} has shape {value.shape}; expected {want}"
      )
      continue
    pairs.append((var, _KINDS[kind][1](value)))
  known = {name for _, name, _ in rows}
  unused = sorted(
    n for n in state if n not in known and not n.endswith(_IGNORED_SUFFIXES)
  )
  if unused:
    problems.append(f"unused tensors {unused}")
  if problems:
    raise ValueError(
      f"checkpoint does not match {what}: " + "; ".join(problems)
    )
  sharded_load.assign(model, pairs, family=family, mesh=mesh, rules=rules)


def _export(rows: list[Row]) -> dict[str, np.ndarray]:
  return {
    name: np.ascontiguousarray(_KINDS[kind][2](np.asarray(var[...])))
    for var, name, kind in rows
  }


def _rename(state: StateDict) -> StateDict:
  """Maps the older spellings onto the transformers 5 file names."""
  out, source = {}, {}
  for name, value in state.items():
    new = next(
      (new + name[len(old) :] for old, new in _RENAMES if name.startswith(old)),
      name,
    )
    if new in out:
      raise ValueError(
        f"tensors {source[new]!r} and {name!r} both name {new!r}"
      )
    out[new], source[new] = value, name
  return out


def load_clip_vision_state_dict(
  model: ClipVision,
  state: StateDict,
  *,
  mesh: Mesh | None = None,
  rules: Rules | None = None,
) -> None:
  """Copies an HF `CLIPVisionModel` state dict into `model` in place.

  Args:
    model: a `ClipVision` (possibly abstract) whose config matches.
    state: `{HF name: array or LazyTensor}`, with or without the
      `vision_model.` prefix.
    mesh: None: every tensor whole on the default device. A mesh: every
      tensor sharded by the "clip_vision" family's logical axes and
      `rules`, each device reading only its shard (`sharded_load.assign`).
    rules: logical axis -> mesh axes (None: the default rules).

  Raises:
    ValueError: naming each missing, mis-shaped (actual and expected
      shapes) or unused tensor; the model is then unchanged.
  """
  prefix = "vision_model."
  state = {
    n[len(prefix) :] if n.startswith(prefix) else n: v for n, v in state.items()
  }
  _load(
    model,
    _clip_rows(model, ""),
    state,
    "ClipVision",
    "clip_vision",
    mesh,
    rules,
  )


def load_llava_state_dict(
  model: LlavaLM,
  state: StateDict,
  *,
  mesh: Mesh | None = None,
  rules: Rules | None = None,
) -> None:
  """Copies an HF `LlavaForConditionalGeneration` state dict into `model`.

  Every tensor is checked before any is written, so on error the model is
  unchanged. A tied LM (`tie_embeddings`) takes no `lm_head.weight`.

  Args:
    model: a `LlavaLM` (possibly abstract, from `nnx.eval_shape`) whose
      config matches the checkpoint.
    state: `{HF name: array or LazyTensor}` in any spelling of the module
      docstring.
    mesh: None: every tensor whole on the default device. A mesh: every
      tensor sharded by the "llava" family's logical axes and `rules`,
      each device reading only its shard (`sharded_load.assign`).
    rules: logical axis -> mesh axes (None: the default rules).

  Raises:
    ValueError: naming each missing tensor, each tensor with its actual and
      expected shapes, each unused tensor (`rotary_emb.inv_freq` and
      `embeddings.position_ids` buffers excepted), and two spellings of one
      tensor.
  """
  _load(
    model,
    _llava_rows(model),
    _rename(state),
    "LlavaLM",
    "llava",
    mesh,
    rules,
  )


def export_llava_state_dict(model: LlavaLM) -> dict[str, np.ndarray]:
  """The inverse of `load_llava_state_dict`: `{transformers 5 file name:
  array}`, e.g. for `safetensors.numpy.save_file` next to a config.json."""
  return _export(_llava_rows(model))


def llava_tensor_shapes(model: LlavaLM) -> dict[str, tuple[int, ...]]:
  """`{transformers 5 file name: shape}` a checkpoint for `model` holds.
  Works on an abstract model (`nnx.eval_shape`), so the 7B layout is
  checked without weights."""
  return {name: _hf_shape(var, kind) for var, name, kind in _llava_rows(model)}


def llava_from_pretrained(
  path: str | os.PathLike,
  *,
  dtype: DTypeLike = jnp.float32,
  param_dtype: DTypeLike | None = None,
  mesh: Mesh | None = None,
  rules: Rules | None = None,
) -> LlavaLM:
  """Builds a `LlavaLM` from a Hugging Face folder (e.g. a download of
  llava-hf/llava-1.5-7b-hf).

  The model is built abstractly (`nnx.eval_shape`) and filled from the
  checkpoint, read lazily, so a 7B model never holds a random copy of its
  weights, nor a second copy of the checkpoint in host memory.

  Args:
    path: folder with `config.json` and a checkpoint (see
      `checkpoint_files.read_state_dict`; sharded safetensors are merged).
    dtype: compute dtype (see `LlavaConfig.from_hf`).
    param_dtype: parameter dtype; the checkpoint is cast to it. None: the
      checkpoint's own (`sharded_load.checkpoint_dtype`; llava-1.5-7b-hf
      is float16).
    mesh: shard the parameters over this mesh, each device reading only
      its shards (see `load_llava_state_dict`); None: one device.
    rules: logical axis -> mesh axes with `mesh` (None: the defaults).

  Raises:
    ValueError: no `config.json`, an unsupported config, or tensors that do
      not match (see `load_llava_state_dict`).
  """
  path = os.fspath(path)
  hf = read_hf_config(path)
  state = read_state_dict(path, lazy=True)
  if param_dtype is None:
    param_dtype = sharded_load.checkpoint_dtype(state)
  cfg = LlavaConfig.from_hf(hf, dtype=dtype, param_dtype=param_dtype)
  model = nnx.eval_shape(lambda: LlavaLM(cfg, rngs=nnx.Rngs(0)))
  load_llava_state_dict(model, state, mesh=mesh, rules=rules)
  return model
