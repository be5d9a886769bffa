"""Hugging Face Llama / Mistral / Qwen2 checkpoints ↔ `LlamaLM` parameters.

Maps the `LlamaForCausalLM` / `MistralForCausalLM` / `Qwen2ForCausalLM`
tensor names (`model.embed_tokens.weight`,
`model.layers.{i}.self_attn.q_proj.weight`, Qwen2's
`model.layers.{i}.self_attn.{q,k,v}_proj.bias`, ..., `model.norm.weight`,
`lm_head.weight`) onto the NNX modules of `jaxexit.models.llama`. Torch
`nn.Linear.weight` is `[out, in]` and NNX `Linear.kernel` is `[in, out]`,
so linear weights are transposed (biases are not). Files are read by
`checkpoint_files.read_state_dict` (safetensors, sharded index files,
`pytorch_model.bin`, no torch needed); with a mesh, each device reads only
its shard of every tensor (`jaxexit.models.sharded_load`).

`LLAMA_CONFIGS` holds the sizes of the checkpoints the experiments use and a
tiny test config.
"""

import os
from collections.abc import Mapping

import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxexit.models import sharded_load
from jaxexit.models.checkpoint_files import read_hf_config, read_state_dict
from jaxexit.models.lazy_tensors import LazyTensor, from_array
from jaxexit.models.llama import LlamaConfig, LlamaLM
from jaxexit.sharding.rules import Rules

StateDict = Mapping[str, np.ndarray | LazyTensor]

LLAMA_CONFIGS = {
  # Unit tests: GQA (4 query heads on 2 KV heads), untied.
  "tiny": LlamaConfig(
    vocab_size=128,
    d_model=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    mlp_hidden=64,
    max_position=64,
  ),
  "mistral-7b-v0.1": LlamaConfig(
    vocab_size=32000,
    d_model=4096,
    num_layers=32,
    num_heads=32,
    num_kv_heads=8,
    mlp_hidden=14336,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_embeddings=False,
    sliding_window=4096,
    max_position=32768,
  ),
  "smollm2-135m": LlamaConfig(
    vocab_size=49152,
    d_model=576,
    num_layers=30,
    num_heads=9,
    num_kv_heads=3,
    mlp_hidden=1536,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    tie_embeddings=True,
    max_position=8192,
  ),
  # Qwen2 (q/k/v biases); config.json's sliding_window=4096 is unused
  # (use_sliding_window=false).
  "deepseek-r1-distill-qwen-1.5b": LlamaConfig(
    vocab_size=151936,
    d_model=1536,
    num_layers=28,
    num_heads=12,
    num_kv_heads=2,
    mlp_hidden=8960,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    tie_embeddings=False,
    qkv_bias=True,
    max_position=131072,
  ),
}

# Buffers some checkpoints carry; RoPE is recomputed from the config.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_QKV_BIAS_SUFFIXES = tuple(f"self_attn.{p}_proj.bias" for p in "qkv")


def hf_layout(cfg: LlamaConfig) -> list[tuple[str, str, bool]]:
  """(module attribute path, HF name, is a Linear weight to transpose)."""
  rows = [("embed_tokens.embedding", "model.embed_tokens.weight", False)]
  for i in range(cfg.num_layers):
    ours, hf = f"layers.{i}.", f"model.layers.{i}."
    rows += [
      (
        f"{ours}self_attn.{p}_proj.kernel",
        f"{hf}self_attn.{p}_proj.weight",
        True,
      )
      for p in "qkvo"
    ]
    if cfg.qkv_bias:
      rows += [
        (
          f"{ours}self_attn.{p}_proj.bias",
          f"{hf}self_attn.{p}_proj.bias",
          False,
        )
        for p in "qkv"
      ]
    rows += [
      (f"{ours}mlp.{p}_proj.kernel", f"{hf}mlp.{p}_proj.weight", True)
      for p in ("gate", "up", "down")
    ]
    rows += [
      (f"{ours}{n}.scale", f"{hf}{n}.weight", False)
      for n in ("input_layernorm", "post_attention_layernorm")
    ]
  rows.append(("norm.scale", "model.norm.weight", False))
  if not cfg.tie_embeddings:
    rows.append(("unembed.kernel", "lm_head.weight", True))
  return rows


def module_variable(model: LlamaLM, path: str) -> nnx.Variable:
  node = model
  for part in path.split("."):
    node = node[int(part)] if part.isdigit() else getattr(node, part)
  return node


def _check_tied_head(state: StateDict, problems: list[str]) -> set[str]:
  """A tied checkpoint may still store `lm_head.weight`; accept it only if
  it is the embedding table."""
  if "lm_head.weight" not in state:
    return set()
  head = np.asarray(state["lm_head.weight"])
  embed = np.asarray(state.get("model.embed_tokens.weight"))
  if head.shape != embed.shape or not np.array_equal(head, embed):
    problems.append(
      "tensor 'lm_head.weight' differs from "
      "'model.embed_tokens.weight' but "
      "LlamaConfig.tie_embeddings=True"
    )
  return {"lm_head.weight"}


def load_llama_state_dict(
  model: LlamaLM,
  state: StateDict,
  *,
  mesh: Mesh | None = None,
  rules: Rules | None = None,
) -> None:
  """Copies a Hugging Face state dict into `model` in place.

  Every tensor is checked before any is written, so on error the model is
  unchanged.

  Args:
    model: a `LlamaLM` (possibly abstract, from `nnx.eval_shape`) whose
      config matches the checkpoint.
    state: `{HF name: array or LazyTensor}` of a `LlamaForCausalLM`/
      `MistralForCausalLM`/`Qwen2ForCausalLM`.
    mesh: None: every tensor whole on the default device. A mesh: every
      tensor sharded by the "llama" family's logical axes and `rules`, each
      device reading only its shard (`sharded_load.assign`).
    rules: logical axis -> mesh axes (None: the default rules).

  Raises:
    ValueError: naming each missing tensor, each tensor with its actual and
      expected shapes, and each unused tensor (`*.rotary_emb.inv_freq`
      buffers excepted; q/k/v biases in a checkpoint for a model without
      `qkv_bias` are unused, and the message says so).
  """
  problems: list[str] = []
  used: set[str] = set()
  arrays = []
  for attr, name, transpose in hf_layout(model.cfg):
    var = module_variable(model, attr)
    expected = tuple(var.shape[::-1] if transpose else var.shape)
    if name not in state:
      problems.append(f"missing tensor {name!r}")
      continue
    used.add(name)
    value = from_array(state[name])
    if value.shape != expected:
      problems.append(
        f"tensor {name!r} has shape {value.shape}; expected {expected}"
      )
      continue
    arrays.append((var, value.T if transpose else value))
  if model.cfg.tie_embeddings:
    used |= _check_tied_head(state, problems)
  unused = sorted(
    n for n in set(state) - used if not n.endswith(_IGNORED_SUFFIXES)
  )
  if unused:
    problems.append(f"unused tensors {unused}")
    if not model.cfg.qkv_bias and any(
      n.endswith(_QKV_BIAS_SUFFIXES) for n in unused
    ):
      problems.append(
        "q/k/v projection biases need LlamaConfig.qkv_bias=True (Qwen2)"
      )
  if problems:
    raise ValueError(
      "checkpoint does not match LlamaLM: " + "; ".join(problems)
    )
  sharded_load.assign(model, arrays, family="llama", mesh=mesh, rules=rules)


def export_llama_state_dict(model: LlamaLM) -> dict[str, np.ndarray]:
  """The inverse of `load_llama_state_dict`: `{HF name: array}` (no
  `lm_head.weight` when tied), e.g. for `safetensors.numpy.save_file`."""
  out = {}
  for attr, name, transpose in hf_layout(model.cfg):
    value = np.asarray(module_variable(model, attr)[...])
    out[name] = np.ascontiguousarray(value.T if transpose else value)
  return out


def llama_from_pretrained(
  path: str | os.PathLike,
  *,
  mesh: Mesh | None = None,
  rules: Rules | None = None,
  **overrides,
) -> LlamaLM:
  """Builds a `LlamaLM` from a Hugging Face folder.

  The model is built abstractly (`nnx.eval_shape`) and filled from the
  checkpoint, read lazily, so a 7B model never holds a random copy of its
  weights, nor a second copy of the checkpoint in host memory.

  Args:
    path: folder with `config.json` and a checkpoint (see
      `checkpoint_files.read_state_dict`).
    mesh: shard the parameters over this mesh, each device reading only
      its shards (see `load_llama_state_dict`); None: one device.
    rules: logical axis -> mesh axes with `mesh` (None: the defaults).
    **overrides: `LlamaConfig` fields to override (`dtype`, ...); without
      `param_dtype` the parameters keep the checkpoint's dtype
      (`sharded_load.checkpoint_dtype`: bf16 stays bf16).

  Raises:
    ValueError: no `config.json`, an unsupported config, or tensors that do
      not match (see `load_llama_state_dict`).
  """
  path = os.fspath(path)
  hf = read_hf_config(path)
  state = read_state_dict(path, lazy=True)
  overrides.setdefault("param_dtype", sharded_load.checkpoint_dtype(state))
  cfg = LlamaConfig.from_hf(hf, **overrides)
  model = nnx.eval_shape(lambda: LlamaLM(cfg, rngs=nnx.Rngs(0)))
  load_llama_state_dict(model, state, mesh=mesh, rules=rules)
  return model
