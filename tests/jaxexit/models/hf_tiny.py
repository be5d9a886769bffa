"""Tiny random Hugging Face encoders saved to disk, for parity tests.

Needs torch + transformers (callers `pytest.importorskip` them first).
"""

import json
import os

import jax.numpy as jnp
import numpy as np

SIZES = dict(
  hidden_size=32,
  num_attention_heads=4,
  intermediate_size=64,
  vocab_size=100,
  attn_implementation="eager",
)


def build(model_type: str, num_layers: int = 3):
  """A seeded random HF model whose every parameter is perturbed.

  HF initialises LayerNorm to (1, 0) and biases to 0, which would hide a
  swapped scale/bias or a missing bias; noise on every tensor exposes them.
  """
  import torch
  import transformers as tf

  torch.manual_seed(0)
  if model_type == "bert":
    cfg = tf.BertConfig(num_hidden_layers=num_layers, **SIZES)
    model = tf.BertModel(cfg)
  elif model_type == "roberta":
    cfg = tf.RobertaConfig(
      num_hidden_layers=num_layers,
      pad_token_id=1,
      max_position_embeddings=40,
      type_vocab_size=1,
      layer_norm_eps=1e-5,
      **SIZES,
    )
    model = tf.RobertaModel(cfg)
  else:
    cfg = tf.AlbertConfig(
      num_hidden_layers=num_layers, embedding_size=16, **SIZES
    )
    model = tf.AlbertModel(cfg)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model.eval()


def save(model, folder: str, fmt: str) -> str:
  """Saves as `model.safetensors` (save_pretrained) or `pytorch_model.bin`."""
  import torch

  if fmt == "safetensors":
    model.save_pretrained(folder)
  else:
    os.makedirs(folder, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(folder, "pytorch_model.bin"))
    with open(os.path.join(folder, "config.json"), "w") as f:
      json.dump(model.config.to_dict(), f)
  return folder


def inputs(pad_id: int, batch: int = 3, length: int = 12, seed: int = 0):
  """ids [B, T] with right padding of different lengths, mask, type ids."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(2, 100, (batch, length))
  lengths = np.array([length, 8, 5][:batch])
  mask = np.arange(length)[None] < lengths[:, None]
  ids = np.where(mask, ids, pad_id)
  types = (np.arange(length)[None] >= lengths[:, None] // 2) & mask
  return ids, mask.astype(np.int64), types.astype(np.int64)


def torch_forward(model, ids, mask, types=None):
  """(hidden_states [L+1, B, T, D], pooled [B, D]) as numpy."""
  import torch

  t = lambda x: torch.as_tensor(x)
  with torch.no_grad():
    out = model(
      input_ids=t(ids),
      attention_mask=t(mask),
      token_type_ids=None if types is None else t(types),
      output_hidden_states=True,
    )
  hs = np.stack([h.numpy() for h in out.hidden_states])
  return hs, out.pooler_output.numpy()


def jax_forward(encoder, ids, mask, types=None):
  j = lambda x: None if x is None else jnp.asarray(x, jnp.int32)
  hs, pooled = encoder(j(ids), j(types), j(mask))
  return np.asarray(hs), np.asarray(pooled)
