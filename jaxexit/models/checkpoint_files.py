"""Hugging Face model folders: `config.json` and checkpoint files.

`read_state_dict` finds a folder's checkpoint (`model.safetensors`,
sharded `*.index.json` files, `pytorch_model.bin`) and returns `{HF name:
tensor}`: numpy arrays, or with `lazy=True` `LazyTensor`s
(`jaxexit.models.lazy_tensors`) that the weight loaders read a shard at a
time. Safetensors files are then only memory-mapped; PyTorch pickles
(`torch_pickle`, no torch needed) are read whole either way.
"""

import json
import os

import numpy as np

from jaxexit.models import lazy_tensors
from jaxexit.models.torch_pickle import load_torch_state_dict

FILES = (
  "model.safetensors",
  "model.safetensors.index.json",
  "pytorch_model.bin",
  "pytorch_model.bin.index.json",
)


def read_json(path: str | os.PathLike):
  """Parses a JSON file; a malformed one is a ValueError naming the path."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{os.fspath(path)}: not a valid JSON file ({e})") from e


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


def _read_file(path: str, lazy: bool) -> dict:
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
      out.update(_read_file(os.path.join(folder, shard), lazy))
    return out
  if path.endswith(".safetensors"):
    tensors = lazy_tensors.open_safetensors(path)
    return tensors if lazy else {n: np.asarray(t) for n, t in tensors.items()}
  state = load_torch_state_dict(path)
  if lazy:
    return {n: lazy_tensors.from_array(a) for n, a in state.items()}
  return state


def read_state_dict(path: str | os.PathLike, *, lazy: bool = False) -> dict:
  """Reads a checkpoint file or folder into `{HF name: tensor}`.

  Args:
    path: a `.safetensors`, `.bin` or `*.index.json` file, or a folder
      holding one of `model.safetensors`, `model.safetensors.index.json`,
      `pytorch_model.bin`, `pytorch_model.bin.index.json` (first found wins).
    lazy: return `LazyTensor`s, read only when (and where) a loader asks.

  Returns:
    `{HF name: numpy array}`, or `{HF name: LazyTensor}` when `lazy`.

  Raises:
    ValueError: if the path or a checkpoint file inside it does not exist,
      or a safetensors file cannot be read.
    CorruptCheckpointError: a truncated or malformed PyTorch checkpoint.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    for name in FILES:
      if os.path.exists(os.path.join(path, name)):
        return _read_file(os.path.join(path, name), lazy)
    raise ValueError(
      f"no checkpoint in folder {path!r}; expected one of {list(FILES)}"
    )
  if not os.path.exists(path):
    raise ValueError(f"checkpoint path {path!r} does not exist")
  return _read_file(path, lazy)
