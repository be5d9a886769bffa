"""Encoders and tokenisers by name, offline first."""

import os
import pathlib

from jaxexit.data.tokenize import TextTokenizer, minilm_tokenizer
from jaxexit.models import checkpoint_pooling, from_pretrained, minilm_path

HUB_MODELS = ("albert-base-v2", "roberta-base", "bert-base-uncased")


def _hub_folder(name: str) -> pathlib.Path:
  """A local snapshot of a Hugging Face hub model (downloads when online)."""
  try:
    from huggingface_hub import snapshot_download
  except ImportError as e:
    raise ValueError(
      f"model={name!r} is not a local folder and huggingface_hub is not "
      "installed to fetch it; pass a folder with config.json and weights"
    ) from e
  try:
    return pathlib.Path(
      snapshot_download(
        name, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]
      )
    )
  except Exception as e:  # offline, unknown repo, ...
    raise ValueError(
      f"model={name!r}: not a local folder and could not be fetched from "
      f"the Hugging Face hub ({type(e).__name__}: {e}). Download it where "
      "you are online and pass its folder."
    ) from e


def load(name: str):
  """(encoder, tokenizer, pooling) for `minilm-l6`, a hub id or a local HF
  folder; `pooling` is how the checkpoint was trained to pool
  (`jaxexit.models.checkpoint_pooling`), which every exit then uses."""
  if name == "minilm-l6":
    folder = minilm_path()
    return (
      from_pretrained(folder),
      minilm_tokenizer(),
      checkpoint_pooling(folder),
    )
  folder = pathlib.Path(name)
  if not folder.is_dir():
    if "/" not in name and name not in HUB_MODELS:
      raise ValueError(
        f"unknown model={name!r}; expected 'minilm-l6', one "
        f"of {list(HUB_MODELS)}, a hub id or a local folder"
      )
    folder = _hub_folder(name)
  # tokenizer.json carries its own normaliser; a bare BERT vocab.txt does not.
  lowercase = (
    None if (folder / "tokenizer.json").is_file() else ("uncased" in name)
  )
  tok = TextTokenizer.from_file(os.fspath(folder), lowercase=lowercase)
  return from_pretrained(folder), tok, checkpoint_pooling(folder)
