"""Lazy checkpoint tensors and sharded loading (`jaxexit.models.sharded_load`).

In-process, on one device: every `LazyTensor` layout change reads the same
boxes as numpy does on the whole array, and `*_from_pretrained` keeps a
bf16 checkpoint bf16 unless a `param_dtype` is asked for. The 8-device
child (`_child_main`, run as a script with 8 simulated CPU devices) loads
tiny random checkpoints (a bf16 Llama, LLaVA, Mamba, Mamba-2 and BERT saved
by transformers, and a quantised GGUF) into abstract models on mesh (data
2, fsdp 2, tensor 2), and checks values, dtypes and specs against the
single-device loader, that each device holds exactly the bytes of its
shards (about 1/4 of the model), and that no read of a sharded tensor
returned the whole tensor.
"""

import collections
import json
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from tests.jaxexit.sharding.device_children import child_env, run_children
from tests.tiers import slow

if __name__ == "__main__":  # The 8-device child checks shapes like conftest.
  from jaxtyping import install_import_hook

  install_import_hook(["jaxexit"], "beartype.beartype")

from jaxexit.models import (  # noqa: E402
  BertConfig,
  BertEncoder,
  export_hf_state_dict,
  from_pretrained,
  lazy_tensors,
  sharded_load,
)
from jaxexit.models.lazy_tensors import (  # noqa: E402
  computed,
  from_array,
  stack,
)
from jaxexit.models.llama import LlamaLM  # noqa: E402
from jaxexit.models.llama_weights import (  # noqa: E402
  LLAMA_CONFIGS,
  export_llama_state_dict,
  llama_from_pretrained,
)
from jaxexit.sharding import make_mesh, state_shardings  # noqa: E402

A = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)
B = A + 1.0

# (lazy layout change, its numpy reference on the whole array).
LAYOUTS = {
  "same": (lambda a: a, lambda a: a),
  "T": (lambda a: a.T, lambda a: a.T),
  "transpose": (lambda a: a.transpose(1, 2, 0), lambda a: a.transpose(1, 2, 0)),
  "int": (lambda a: a[:, 1], lambda a: a[:, 1]),
  "slices": (lambda a: a[1:3, :, 2], lambda a: a[1:3, :, 2]),
  "T_then_index": (lambda a: a.T[-1, 1:3], lambda a: a.T[-1, 1:3]),
}


def _boxes(shape, rng, n=6):
  boxes = [lazy_tensors.full_box(shape)]
  for _ in range(n):
    box = []
    for size in shape:
      start = int(rng.integers(0, size))
      box.append(slice(start, int(rng.integers(start, size)) + 1))
    boxes.append(tuple(box))
  return boxes


def _check_reads(lazy, ref):
  assert lazy.shape == ref.shape and lazy.dtype == ref.dtype
  boxes = _boxes(ref.shape, np.random.default_rng(1))
  for box, value in zip(boxes, lazy.read_many(boxes)):
    np.testing.assert_array_equal(value, ref[box], err_msg=str(box))
  np.testing.assert_array_equal(np.asarray(lazy), ref)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layouts_read_the_boxes_numpy_does(name):
  lazy_fn, ref_fn = LAYOUTS[name]
  _check_reads(lazy_fn(from_array(A)), ref_fn(A))
  _check_reads(stack([A, B]), np.stack([A, B]))
  _check_reads(lazy_fn(stack([A, B])[1]), ref_fn(B))
  whole = computed(lambda: A * 2, A.shape, A.dtype)
  _check_reads(lazy_fn(whole), ref_fn(A * 2))


def test_stack_reads_each_part_once_per_call():
  calls = collections.Counter()

  def part(i):
    def build():
      calls[i] += 1
      return A + i

    return computed(build, A.shape, A.dtype)

  lazy = stack([part(0), part(1), part(2)]).T
  lazy.read_many(_boxes(lazy.shape, np.random.default_rng(2), n=10))
  assert calls == {0: 1, 1: 1, 2: 1}


def test_bad_boxes_and_indices_raise():
  with pytest.raises(ValueError, match="step 1"):
    lazy_tensors.normalise((slice(0, 3, 2),), (3,))
  with pytest.raises(ValueError, match="one slice per dim"):
    lazy_tensors.normalise((slice(0, 3),), (3, 4))
  with pytest.raises(ValueError, match="no permutation"):
    from_array(A).transpose(0, 0, 1)
  with pytest.raises(IndexError, match="out of bounds"):
    from_array(A)[3]
  with pytest.raises(ValueError, match="stacked tensors differ"):
    stack([A, A[0]])
  bad = computed(lambda: A, (3, 4), A.dtype)
  with pytest.raises(ValueError, match=r"declared \(3, 4\)"):
    np.asarray(bad)


def test_safetensors_boxes_keep_bf16(tmp_path):
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  value = A.astype(jnp.bfloat16)
  safetensors_numpy.save_file({"w": value}, str(tmp_path / "w.safetensors"))
  lazy = lazy_tensors.open_safetensors(str(tmp_path / "w.safetensors"))["w"]
  assert lazy.dtype == jnp.bfloat16
  _check_reads(lazy.transpose(2, 0, 1)[1:], value.transpose(2, 0, 1)[1:])


def test_checkpoint_dtype_is_the_majority_float():
  big = np.zeros((8, 8), jnp.bfloat16)
  small = np.zeros((4,), np.float32)
  ids = np.zeros((100,), np.int64)
  assert sharded_load.checkpoint_dtype({"a": big, "b": small}) is jnp.bfloat16
  assert sharded_load.checkpoint_dtype({"a": small, "i": ids}) is jnp.float32
  assert sharded_load.checkpoint_dtype({"i": ids}) is jnp.float32


TINY_BERT_JSON = dict(
  model_type="bert",
  vocab_size=100,
  hidden_size=32,
  num_hidden_layers=2,
  num_attention_heads=4,
  intermediate_size=64,
  max_position_embeddings=40,
)
# config.json of LLAMA_CONFIGS["tiny"].
TINY_LLAMA_JSON = dict(
  model_type="llama",
  vocab_size=128,
  hidden_size=32,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  intermediate_size=64,
  max_position_embeddings=64,
  tie_word_embeddings=False,
)


def test_from_pretrained_keeps_bf16_unless_asked(tmp_path):
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  src = LlamaLM(LLAMA_CONFIGS["tiny"], rngs=nnx.Rngs(0))
  state = {
    k: v.astype(jnp.bfloat16) for k, v in export_llama_state_dict(src).items()
  }
  safetensors_numpy.save_file(state, str(tmp_path / "model.safetensors"))
  (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA_JSON))
  model = llama_from_pretrained(tmp_path)
  kernel = model.layers[0].self_attn.q_proj.kernel
  assert model.cfg.param_dtype is jnp.bfloat16
  assert kernel.dtype == jnp.bfloat16
  want = state["model.layers.0.self_attn.q_proj.weight"].T
  np.testing.assert_array_equal(np.asarray(kernel[...]), want)
  cast = llama_from_pretrained(tmp_path, param_dtype=jnp.float32)
  assert cast.layers[0].self_attn.q_proj.kernel.dtype == jnp.float32
  np.testing.assert_array_equal(
    cast.layers[0].self_attn.q_proj.kernel[...], want.astype(np.float32)
  )


@slow
def test_missing_pooler_gets_the_fresh_init(tmp_path):
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  cfg = BertConfig(
    vocab_size=100,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    intermediate_size=64,
    max_position_embeddings=40,
  )
  src = BertEncoder(cfg, rngs=nnx.Rngs(3))
  state = {
    k: v for k, v in export_hf_state_dict(src).items() if "pooler" not in k
  }
  safetensors_numpy.save_file(state, str(tmp_path / "model.safetensors"))
  (tmp_path / "config.json").write_text(json.dumps(TINY_BERT_JSON))
  model = from_pretrained(tmp_path, require_pooler=False)
  fresh = BertEncoder(cfg, rngs=nnx.Rngs(0))
  # Jitted, the initialiser may round differently (jax 0.10.2: 1 ulp).
  for name in ("kernel", "bias"):
    np.testing.assert_allclose(
      getattr(model.pooler, name), getattr(fresh.pooler, name), rtol=1e-6
    )
  np.testing.assert_array_equal(
    model.word_embeddings.embedding, src.word_embeddings.embedding
  )


# ----------------------------------------------------------------------
# The 8-device child.


def _hf_llama(dtype):
  """A tiny random HF Llama in `dtype` (a torch dtype)."""
  import torch
  import transformers as tf

  torch.manual_seed(0)
  cfg = tf.LlamaConfig(
    vocab_size=128,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=64,
  )
  return tf.LlamaForCausalLM(cfg).to(dtype).eval()


# Hard-coded specs of a few parameters under the default rules.
SPECS = {
  "llama": {
    "embed_tokens/embedding": P("tensor", "fsdp"),
    "layers/0/self_attn/q_proj/kernel": P("fsdp", "tensor"),
    "layers/1/mlp/down_proj/kernel": P("tensor", "fsdp"),
    "norm/scale": P("fsdp"),
    "unembed/kernel": P("fsdp", "tensor"),
  },
  "llava": {
    "vision/layers/0/fc1/kernel": P("fsdp", "tensor"),
    "projector/linear_2/kernel": P("tensor", "fsdp"),
    "lm/layers/0/self_attn/o_proj/kernel": P("tensor", "fsdp"),
  },
  "mamba": {
    "layers/mixer/in_proj/kernel": P(None, "fsdp", "tensor"),
    "layers/mixer/conv1d/weight": P(None, "tensor", None),
    "layers/mixer/A_log": P(None, "tensor", None),
  },
  "mamba2": {"layers/mixer/out_proj/kernel": P(None, "tensor", "fsdp")},
  "bert": {
    "word_embeddings/embedding": P("tensor", "fsdp"),
    "layers/ffn_in/kernel": P(None, "fsdp", "tensor"),
  },
  "gguf": {"layers/0/self_attn/k_proj/kernel": P("fsdp", "tensor")},
}
# Read whole by design: the patch kernel's reshape mixes its dimensions.
WHOLE_READS_ALLOWED = {(48, 3, 8, 8)}


def _cases(tmp: str) -> dict:
  """{case: (family, dtype, load(mesh) -> model)} over tiny checkpoints."""
  import torch
  import transformers as tf

  from jaxexit.models import gguf_weights, hf_weights, mamba_weights
  from jaxexit.models.llava_weights import llava_from_pretrained
  from jaxexit.models.llama import LlamaConfig, LlamaLM
  from jaxexit.models.llama_weights import load_llama_state_dict
  from tests.jaxexit.models import (
    gguf_weights_test,
    hf_tiny,
    llava_test,
    mamba2_test,
    mamba_test,
  )

  _hf_llama(torch.bfloat16).save_pretrained(f"{tmp}/llama")
  llava_test.hf_llava().save_pretrained(f"{tmp}/llava")
  torch.manual_seed(0)
  mamba_test.perturbed(
    tf.MambaForCausalLM(tf.MambaConfig(time_step_rank=4, **mamba_test.HF_SIZES))
  ).save_pretrained(f"{tmp}/mamba")
  mamba_test.perturbed(
    tf.Mamba2ForCausalLM(tf.Mamba2Config(**mamba2_test.HF_SIZES))
  ).save_pretrained(f"{tmp}/mamba2")
  hf_tiny.save(hf_tiny.build("bert"), f"{tmp}/bert", "safetensors")
  q = gguf_weights_test.Q
  gguf_path = gguf_weights_test.write_gguf(
    f"{tmp}/tiny.gguf",
    gguf_weights_test.TINY,
    gguf_weights_test.random_state(gguf_weights_test.TINY, tied=False),
    qtypes={"token_embd.weight": q.Q8_0, "blk.0.attn_q.weight": q.Q4_1},
  )

  def gguf_load(mesh):
    hf, state = gguf_weights.read_gguf_llama(gguf_path, lazy=mesh is not None)
    cfg = LlamaConfig.from_hf(hf)
    model = nnx.eval_shape(lambda: LlamaLM(cfg, rngs=nnx.Rngs(0)))
    load_llama_state_dict(model, state, mesh=mesh)
    return model

  def folder(from_pretrained, name):
    return lambda mesh: from_pretrained(f"{tmp}/{name}", mesh=mesh)

  mamba = mamba_weights.mamba_from_pretrained
  return {
    "llama": ("llama", jnp.bfloat16, folder(llama_from_pretrained, "llama")),
    "llava": ("llava", jnp.float32, folder(llava_from_pretrained, "llava")),
    "mamba": ("mamba", jnp.float32, folder(mamba, "mamba")),
    "mamba2": ("mamba2", jnp.float32, folder(mamba, "mamba2")),
    "bert": ("bert", jnp.float32, folder(hf_weights.from_pretrained, "bert")),
    "gguf": ("llama", jnp.float32, gguf_load),
  }


def _params(model) -> dict:
  return {
    "/".join(map(str, path)): var[...]
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))
  }


def _per_device_bytes(arrays) -> dict:
  per = collections.Counter()
  for x in arrays:
    for shard in x.addressable_shards:
      per[shard.device] += shard.data.nbytes
  return per


def _shards(x) -> int:
  """How many distinct boxes the array is cut into."""
  return len({str(s.index) for s in x.addressable_shards})


class _ReadLog:
  """Records (tensor shape, box size) of every source read, and how many
  times a computed tensor (GGUF dequantisation) was built."""

  def __init__(self):
    self.reads, self.builds = [], 0
    self._originals = (
      lazy_tensors._Source.read_many,
      lazy_tensors._Computed.read_many,
    )

  def __enter__(self):
    source_read, computed_read = self._originals

    def read_source(source, boxes):
      for box in boxes:
        size = int(np.prod([b.stop - b.start for b in box]))
        self.reads.append((source.shape, size))
      return source_read(source, boxes)

    def read_computed(tensor, boxes):
      self.builds += 1
      return computed_read(tensor, boxes)

    lazy_tensors._Source.read_many = read_source
    lazy_tensors._Computed.read_many = read_computed
    return self

  def __exit__(self, *exc):
    lazy_tensors._Source.read_many = self._originals[0]
    lazy_tensors._Computed.read_many = self._originals[1]


def _check_values_and_specs(name, family, dtype, one, many, mesh) -> None:
  assert sorted(one) == sorted(many), name
  want = state_shardings(
    {p: jax.ShapeDtypeStruct(x.shape, x.dtype) for p, x in one.items()},
    mesh,
    family=family,
  )
  for path, x in many.items():
    assert len(one[path].devices()) == 1, path
    assert x.dtype == one[path].dtype == dtype, (path, x.dtype)
    assert x.sharding.spec == want[path].spec, (path, x.sharding.spec)
    np.testing.assert_array_equal(
      np.asarray(x), np.asarray(one[path]), err_msg=path
    )
  for path, spec in SPECS[name].items():
    assert many[path].sharding.spec == spec, (path, many[path].sharding.spec)


def _axes(spec) -> set:
  return {a for entry in spec if entry for a in np.atleast_1d(entry)}


def _check_case(name, family, dtype, load, mesh) -> str:
  one = _params(load(None))
  with _ReadLog() as log:
    many = _params(load(mesh))
  _check_values_and_specs(name, family, dtype, one, many, mesh)
  # Every device holds exactly its shard of every array: 1/4 of each
  # array split on fsdp and tensor, 1/2 of one split on either.
  total = sum(x.nbytes for x in many.values())
  per = _per_device_bytes(many.values())
  planned = sum(x.nbytes // _shards(x) for x in many.values())
  assert len(per) == 8 and set(per.values()) == {planned}, (name, per)
  both = [
    x for x in many.values() if _axes(x.sharding.spec) == {"fsdp", "tensor"}
  ]
  assert _per_device_bytes(both).most_common(1)[0][1] * 4 == sum(
    x.nbytes for x in both
  )
  assert planned < 0.4 * total, (name, planned, total)
  assert _per_device_bytes(one.values()).most_common(1)[0][1] == total
  # No read of a sharded checkpoint tensor returned all of it.
  whole = [
    shape
    for shape, size in log.reads
    if len(shape) >= 2 and size == np.prod(shape)
  ]
  assert set(whole) <= WHOLE_READS_ALLOWED, (name, whole)
  # A GGUF tensor is dequantised once, however many devices need a shard.
  if name == "gguf":
    assert log.builds == len(many), (log.builds, len(many))
  return (
    f"CHILD {name}: {len(many)} params {total} B; each of 8 devices holds "
    f"{planned} B ({planned / total:.3f}); fsdp+tensor-split params "
    f"{sum(x.nbytes for x in both)} B, 1/4 per device; {len(log.reads)} "
    f"box reads, {len(whole)} whole 2-D+ tensors, {log.builds} builds"
  )


def _child_main() -> None:
  assert jax.device_count() == 8
  mesh = make_mesh("data=2,fsdp=2,tensor=2")
  with tempfile.TemporaryDirectory() as tmp:
    for name, (family, dtype, load) in _cases(tmp).items():
      print(_check_case(name, family, dtype, load, mesh), flush=True)
  print("CHILD OK")


@slow
def test_sharded_loading_in_8_device_child():
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  (out,) = run_children(__file__, [child_env(8)], timeout=900)
  print(out)
  assert "CHILD llama:" in out and "CHILD gguf:" in out


if __name__ == "__main__" and "--child" in sys.argv:
  _child_main()
