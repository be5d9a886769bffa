"""HF Mamba / Mamba-2 checkpoints: names, shapes, folders, errors."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from jaxexit.models.mamba import MAMBA_CONFIGS, MambaConfig, MambaLM
from jaxexit.models.mamba2 import MAMBA2_CONFIGS, Mamba2Config, Mamba2LM
from jaxexit.models.mamba_weights import (
  hf_tensor_shapes,
  load_mamba2_state_dict,
  load_mamba_state_dict,
  mamba_from_pretrained,
)
from tests.jaxexit.exits.rule_driver import unchecked
from tests.jaxexit.models import mamba2_test, mamba_test
from tests.tiers import fast_only

tf = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")


def abstract(cls, cfg):
  return nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def hf_models():
  """{"mamba": tied HF Mamba, "mamba2": untied HF Mamba-2}, random."""
  torch.manual_seed(0)
  return {
    "mamba": mamba_test.perturbed(
      tf.MambaForCausalLM(
        tf.MambaConfig(time_step_rank=4, **mamba_test.HF_SIZES)
      )
    ),
    "mamba2": mamba_test.perturbed(
      tf.Mamba2ForCausalLM(tf.Mamba2Config(**mamba2_test.HF_SIZES))
    ),
  }


def loaded(hf):
  if hf.config.model_type == "mamba":
    cfg, cls, load = (
      MambaConfig.from_hf(hf.config.to_dict()),
      MambaLM,
      load_mamba_state_dict,
    )
  else:
    cfg, cls, load = (
      Mamba2Config.from_hf(hf.config.to_dict()),
      Mamba2LM,
      load_mamba2_state_dict,
    )
  model = abstract(cls, cfg)
  load(model, mamba_test.numpy_state(hf))
  return model


@pytest.mark.parametrize("family", fast_only(["mamba", "mamba2"], "mamba"))
def test_from_pretrained_folder(hf_models, family, tmp_path):
  hf = hf_models[family]
  hf.save_pretrained(tmp_path)
  model = mamba_from_pretrained(tmp_path)
  assert type(model) is (MambaLM if family == "mamba" else Mamba2LM)
  mamba_test.assert_tree_equal(
    nnx.state(model, nnx.Param), nnx.state(loaded(hf), nnx.Param)
  )
  logits = mamba_test.hf_forward(hf, mamba_test.IDS[:, :3])[0]
  ours = model(jax.numpy.asarray(mamba_test.IDS[:, :3], jax.numpy.int32))
  np.testing.assert_allclose(ours.logits, logits, atol=1e-4, rtol=0)


def test_bf16_override(hf_models, tmp_path):
  hf_models["mamba2"].save_pretrained(tmp_path)
  model = mamba_from_pretrained(tmp_path, param_dtype=jax.numpy.bfloat16)
  assert model.layers.mixer.in_proj.kernel.dtype == jax.numpy.bfloat16


def test_missing_misshaped_unexpected_are_named(hf_models):
  state = mamba_test.numpy_state(hf_models["mamba2"])
  model = abstract(Mamba2LM, mamba2_test.TINY)
  bad = dict(state)
  del bad["backbone.layers.1.mixer.dt_bias"]
  with pytest.raises(
    ValueError, match="missing tensors 'backbone.layers.1.mixer.dt_bias'"
  ):
    load_mamba2_state_dict(model, bad)
  bad = dict(state)
  bad["backbone.layers.0.mixer.conv1d.weight"] = np.zeros((96, 4))
  with pytest.raises(
    ValueError,
    match=r"'backbone.layers.0.mixer.conv1d."
    r"weight' has shape \(96, 4\); expected \(96, 1, 4\)",
  ):
    load_mamba2_state_dict(model, bad)
  bad = {**state, "backbone.layers.2.norm.weight": np.zeros(32)}
  with pytest.raises(
    ValueError, match="unexpected tensors 'backbone.layers.2.norm.weight'"
  ):
    load_mamba2_state_dict(model, bad)
  with pytest.raises(ValueError, match="missing tensors 'lm_head.weight'"):
    load_mamba2_state_dict(
      model, {k: v for k, v in state.items() if k != "lm_head.weight"}
    )
  with pytest.raises(ValueError, match="expected a Mamba2LM; got MambaLM"):
    unchecked(load_mamba2_state_dict)(abstract(MambaLM, mamba_test.TINY), state)


def test_tied_head_and_old_names(hf_models):
  state = mamba_test.numpy_state(hf_models["mamba"])
  ref = nnx.state(loaded(hf_models["mamba"]), nnx.Param)
  model = abstract(MambaLM, mamba_test.TINY)
  # Old `embedding.` spelling, no lm_head (tied), bare `MambaModel` names.
  old = {
    k.replace("embeddings.", "embedding."): v
    for k, v in state.items()
    if k != "lm_head.weight"
  }
  load_mamba_state_dict(model, old)
  mamba_test.assert_tree_equal(nnx.state(model, nnx.Param), ref)
  bare = {k.removeprefix("backbone."): v for k, v in old.items()}
  load_mamba_state_dict(model, bare)
  mamba_test.assert_tree_equal(nnx.state(model, nnx.Param), ref)
  bad = {**state, "lm_head.weight": state["lm_head.weight"] + 1}
  with pytest.raises(ValueError, match="'lm_head.weight' differs"):
    load_mamba_state_dict(model, bad)


@pytest.mark.parametrize("family", ["mamba-130m", "codestral-mamba-7b"])
def test_paper_configs_match_hf_layout(family):
  """Every tensor name and shape of the paper config equals HF's (built on
  the meta device, so nothing is allocated)."""
  if family == "mamba-130m":
    hf_cfg = tf.MambaConfig(
      vocab_size=50280,
      hidden_size=768,
      num_hidden_layers=24,
      state_size=16,
      time_step_rank=48,
    )
    model = abstract(MambaLM, MAMBA_CONFIGS[family])
    cls = tf.MambaForCausalLM
  else:
    hf_cfg = tf.Mamba2Config()  # HF's defaults are Codestral's sizes
    model = abstract(Mamba2LM, MAMBA2_CONFIGS[family])
    cls = tf.Mamba2ForCausalLM
  with torch.device("meta"):
    hf = cls(hf_cfg)
  theirs = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
  if hf_cfg.tie_word_embeddings:
    del theirs["lm_head.weight"]
  assert hf_tensor_shapes(model) == theirs
  cfg_cls = MambaConfig if family == "mamba-130m" else Mamba2Config
  assert cfg_cls.from_hf(hf_cfg.to_dict()) == model.cfg


def test_folder_errors(tmp_path):
  with pytest.raises(ValueError, match="no config.json"):
    mamba_from_pretrained(tmp_path)
  with open(tmp_path / "config.json", "w") as f:
    json.dump({"model_type": "llama"}, f)
  with pytest.raises(ValueError, match="model_type='llama'"):
    mamba_from_pretrained(tmp_path)
