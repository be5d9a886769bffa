"""Every variable of every model family matches exactly one table row.

The models are built abstractly (`nnx.eval_shape`: shapes only, no
initialisation), in the variants that add or remove parameters (tied
heads, biases, ALBERT's shared layer, each exit-head kind), and every row
of every table must name at least one variable of its family's variants,
so a row that no longer matches (a renamed module) fails too.
"""

import dataclasses
import re

import jax
import pytest
from flax import nnx

from jaxexit import models
from jaxexit.methods import dynamax
from jaxexit.models import exit_classifier as ec
from jaxexit.models.feature_llava import FeatureLlavaConfig, FeatureLlavaLM
from jaxexit.models.llama_weights import LLAMA_CONFIGS
from jaxexit.nn.encoder import EncoderConfig, ExitEncoder
from jaxexit.sharding import FAMILY_AXES, LOGICAL_AXES, logical_axes
from jaxexit.sharding.logical import path_str

LLAMA = LLAMA_CONFIGS["tiny"]
QWEN2 = dataclasses.replace(LLAMA, qkv_bias=True, tie_embeddings=True)
LLAVA = models.LLAVA_CONFIGS["tiny"]
FEATURE_LLAVA = FeatureLlavaConfig(
  text=LLAMA, feature_dim=12, grid=3, image_token_id=3
)
BERT = models.BertConfig(
  vocab_size=100,
  hidden_size=32,
  num_layers=2,
  num_heads=4,
  intermediate_size=64,
  max_position_embeddings=40,
)
ALBERT = models.AlbertConfig(
  vocab_size=100,
  embedding_size=16,
  hidden_size=32,
  num_layers=2,
  num_heads=4,
  intermediate_size=64,
  max_position_embeddings=40,
)
CNN = models.StagedCNNConfig(
  num_classes=5,
  stem_channels=8,
  channels=(8, 16, 16, 32),
  depths=(1, 1, 1, 1),
  strides=(1, 2, 2, 2),
)


def _exit_classifier(encoder_cls, encoder_cfg, **heads):
  def build(rngs):
    encoder = encoder_cls(encoder_cfg, rngs=rngs)
    cfg = ec.EncoderExitHeadsConfig(num_classes=3, **heads)
    return ec.ExitClassifier(encoder, cfg, rngs=rngs)

  return build


def _dynamax(kind):
  cfg = dynamax.ExitClassifierConfig(kind=kind, num_exits=2, d_model=32)
  return lambda rngs: dynamax.ExitClassifiers(cfg, rngs=rngs)


def _build(cls, cfg):
  return lambda rngs: cls(cfg, rngs=rngs)


# family -> {variant: rngs -> model}
VARIANTS = {
  "llama": {
    "tiny": _build(models.LlamaLM, LLAMA),
    "qwen2_tied": _build(models.LlamaLM, QWEN2),
  },
  "mamba": {
    "tiny": _build(models.MambaLM, models.MAMBA_CONFIGS["tiny"]),
    "biases_untied": _build(
      models.MambaLM,
      dataclasses.replace(
        models.MAMBA_CONFIGS["tiny"], use_bias=True, tie_embeddings=False
      ),
    ),
  },
  "mamba2": {
    "tiny": _build(models.Mamba2LM, models.MAMBA2_CONFIGS["tiny"]),
    "biases": _build(
      models.Mamba2LM,
      dataclasses.replace(models.MAMBA2_CONFIGS["tiny"], use_bias=True),
    ),
  },
  "bert": {
    "bert": _build(models.BertEncoder, BERT),
    "albert": _build(models.AlbertEncoder, ALBERT),
  },
  "vit": {"tiny": _build(models.ViT, models.VIT_CONFIGS["tiny"])},
  "cnn": {
    "basic": _build(models.StagedCNN, CNN),
    "inverted_residual": _build(
      models.StagedCNN, dataclasses.replace(CNN, block="inverted_residual")
    ),
    "efficientnet_lite0": _build(
      models.EfficientNetLite, models.EfficientNetLiteConfig(num_classes=5)
    ),
  },
  "multi_exit_cnn": {
    "basic": lambda rngs: models.MultiExitCNN(
      models.StagedCNN(CNN, rngs=rngs), 5, 16, rngs=rngs
    )
  },
  "clip_vision": {"tiny": _build(models.ClipVision, LLAVA.vision)},
  "llava": {
    "tiny": _build(models.LlavaLM, LLAVA),
    "qwen2_text": _build(
      models.LlavaLM, dataclasses.replace(LLAVA, text=QWEN2)
    ),
  },
  "feature_llava": {
    "tiny": _build(FeatureLlavaLM, FEATURE_LLAVA),
    "qwen2_text": _build(
      FeatureLlavaLM, dataclasses.replace(FEATURE_LLAVA, text=QWEN2)
    ),
  },
  "exit_classifier": {
    "bert_offramp_palbert_lte": _exit_classifier(
      models.BertEncoder,
      BERT,
      classifier="offramp",
      halting="linear_cat",
      learned_exit=True,
    ),
    "albert_shared": _exit_classifier(
      models.AlbertEncoder, ALBERT, classifier="shared", halting="linear"
    ),
  },
  "exit_encoder": {
    "tiny": _build(
      ExitEncoder,
      EncoderConfig(num_layers=2, d_model=16, num_heads=4, d_ff=32),
    )
  },
  "dynamax_mlp_exits": {"mlp": _dynamax("mlp"), "lm_head": _dynamax("lm_head")},
  "dynamax_mamba_exits": {"mamba": _dynamax("mamba")},
}


def _abstract_state(build):
  return nnx.state(nnx.eval_shape(lambda: build(nnx.Rngs(0))))


def test_every_family_has_variants():
  assert sorted(VARIANTS) == sorted(FAMILY_AXES)


@pytest.mark.parametrize("family", sorted(FAMILY_AXES))
def test_each_variable_matches_exactly_one_row(family):
  table = FAMILY_AXES[family]
  used = set()
  for variant, build in VARIANTS[family].items():
    state = _abstract_state(build)
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
      if not leaf.shape:
        continue  # RNG counters: replicated without a row
      name = path_str(path)
      rows = [
        i
        for i, (pattern, axes) in enumerate(table)
        if re.fullmatch(pattern, name) and len(axes) == leaf.ndim
      ]
      assert len(rows) == 1, (variant, name, leaf.shape, rows)
      used.update(rows)
    axes = logical_axes(state, family)
    names = {n for a in axes.values() for n in a}
    assert names <= {*LOGICAL_AXES, None}, names
  unused = [table[i] for i in range(len(table)) if i not in used]
  assert not unused, f"rows of {family!r} matching no variable: {unused}"


def test_unmatched_and_doubly_matched_variables_are_errors():
  state = {"w": jax.ShapeDtypeStruct((4, 2), "float32")}
  with pytest.raises(ValueError, match="no row of the 'llama'.*'w'"):
    logical_axes(state, "llama")
  twice = [("w", ("embed", None)), ("(w|v)", ("mlp", None))]
  with pytest.raises(ValueError, match="'w' .*several rows"):
    logical_axes(state, twice)
  with pytest.raises(ValueError, match="unknown model family 'gpt'"):
    logical_axes(state, "gpt")
