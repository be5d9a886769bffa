"""Logical axis names of every parameter of every model family.

One table per family, in the style of t5x / big_vision partition rules: a
row is `(pattern, axes)`, where `pattern` is a regular expression over a
variable's path in the model's `nnx.state` (keys joined by "/", list
indices as digits) and `axes` names each dimension of the array with a
logical axis (`LOGICAL_AXES`) or None (never sharded). The model files
carry no sharding annotations; `jaxexit.sharding.state_shardings` maps the
names to mesh axes with the rules (`jaxexit.sharding.DEFAULT_RULES`).

Logical axes (letters of `jaxexit.typing` in brackets):

  batch     [B]  examples (activations and data only)
  layers    [L]  a stacked layer axis (`nnx.vmap`'d blocks), replicated
  embed     [D]  model width
  heads     [H]  attention heads, also fused H·K of a q/o projection
  kv_heads       key/value heads (fused Hkv·K of a k/v projection)
  head_dim  [K]  head width, where a kernel keeps it apart
  mlp       [F]  MLP hidden width, also the SSM inner width E
  vocab     [V]  vocabulary
  conv_in, conv_out  CNN input / output channels
  spatial        CNN kernel rows and columns
  state     [S]  SSM state

Dimensions such as classes C, patches P or positions are None. A table
for another model is built the same way (`linear`, `prefixed`, `stacked`)
and passed as `family=` to `jaxexit.sharding.state_shardings`.
"""

from collections.abc import Mapping

Axes = tuple[str | None, ...]
Table = tuple[tuple[str, Axes], ...]

LOGICAL_AXES = (
  "batch",
  "layers",
  "embed",
  "heads",
  "kv_heads",
  "head_dim",
  "mlp",
  "vocab",
  "conv_in",
  "conv_out",
  "spatial",
  "state",
)
LAYER = r"\d+"  # one entry of an `nnx.List` of blocks


def linear(name: str, d_in: str | None, d_out: str | None) -> Table:
  """An `nnx.Linear` `name`: kernel [d_in, d_out] and bias [d_out]."""
  return ((f"{name}/kernel", (d_in, d_out)), (f"{name}/bias", (d_out,)))


def prefixed(prefix: str, table: Table) -> Table:
  """`table` for a submodule at path `prefix`."""
  return tuple((f"{prefix}/{pattern}", axes) for pattern, axes in table)


def stacked(table: Table) -> Table:
  """`table` with a leading "layers" axis (blocks stacked by `nnx.vmap`)."""
  return tuple((pattern, ("layers", *axes)) for pattern, axes in table)


_LLAMA_BLOCK = (
  ("(input|post_attention)_layernorm/scale", ("embed",)),
  *linear("self_attn/q_proj", "embed", "heads"),  # bias: Qwen2 only
  *linear("self_attn/(k|v)_proj", "embed", "kv_heads"),
  ("self_attn/o_proj/kernel", ("heads", "embed")),
  ("mlp/(gate|up)_proj/kernel", ("embed", "mlp")),
  ("mlp/down_proj/kernel", ("mlp", "embed")),
)
LLAMA = (
  ("embed_tokens/embedding", ("vocab", "embed")),
  *prefixed(f"layers/{LAYER}", _LLAMA_BLOCK),
  ("norm/scale", ("embed",)),
  ("unembed/kernel", ("embed", "vocab")),  # absent when tied
)

_CLIP_LAYER = (
  ("layer_norm[12]/(scale|bias)", ("embed",)),
  *linear("(q|k|v)_proj", "embed", "heads"),
  *linear("out_proj", "heads", "embed"),
  *linear("fc1", "embed", "mlp"),
  *linear("fc2", "mlp", "embed"),
)
CLIP_VISION = (
  ("class_embedding", ("embed",)),
  ("patch_embedding/kernel", (None, "embed")),  # [P·P·3, D]
  ("position_embedding", (None, "embed")),
  ("(pre_layrnorm|post_layernorm)/(scale|bias)", ("embed",)),
  *prefixed(f"layers/{LAYER}", _CLIP_LAYER),
)
# Vision width Dv -> D -> D, split like a Megatron MLP.
_PROJECTOR = (
  *linear("projector/linear_1", "embed", "mlp"),
  *linear("projector/linear_2", "mlp", "embed"),
)
LLAVA = (
  *prefixed("vision", CLIP_VISION),
  *_PROJECTOR,
  *prefixed("lm", LLAMA),
)
FEATURE_LLAVA = (
  ("norm/(scale|bias)", ("embed",)),  # over the feature channels C
  ("position", (None, "embed")),  # [N, D]
  *_PROJECTOR,
  *prefixed("lm", LLAMA),
)

_ENCODER_LAYER = (
  *linear("(query|key|value)", "embed", "heads"),
  *linear("attn_out", "heads", "embed"),
  ("(attn_norm|ffn_norm)/(scale|bias)", ("embed",)),
  *linear("ffn_in", "embed", "mlp"),
  *linear("ffn_out", "mlp", "embed"),
)
# BERT / RoBERTa stack their L layers; ALBERT shares one layer and projects
# its embeddings E -> D.
BERT = (
  ("word_embeddings/embedding", ("vocab", "embed")),
  ("(position|token_type)_embeddings/embedding", (None, "embed")),
  ("embed_norm/(scale|bias)", ("embed",)),
  *linear("embed_proj", None, "embed"),
  *prefixed("layers", stacked(_ENCODER_LAYER)),
  *prefixed("layer", _ENCODER_LAYER),
  *linear("pooler", "embed", None),
)
# `EncoderExitHeads`: a shared classifier [D, C] or one per layer
# [L, D, C] (told apart by rank), off-ramp poolers, PALBERT's Lambda layer
# and BERxiT's learned exit.
_ENCODER_HEADS = (
  *linear("classifier", "embed", None),
  *stacked(linear("classifier", "embed", None)),
  *stacked(linear("poolers", "embed", None)),
  *linear(f"halting/features/{LAYER}", "embed", None),
  *linear("halting/out", "embed", None),
  *linear("lte", "embed", None),
)
EXIT_CLASSIFIER = (
  *prefixed("encoder", BERT),
  *prefixed("heads", _ENCODER_HEADS),
)

_EXIT_ENCODER_LAYER = (
  ("qkv", ("embed", None, "heads", "head_dim")),  # [D, 3, H, K]
  ("out", ("heads", "head_dim", "embed")),
  *linear("mlp_in", "embed", "mlp"),
  *linear("mlp_out", "mlp", "embed"),
  ("norm[12]/(scale|bias)", ("embed",)),
)
_EXIT_ENCODER_HEAD = (
  ("norm/(scale|bias)", ("embed",)),
  *linear("proj", "embed", None),
)
# `jaxexit.nn.encoder.ExitEncoder`, the reference encoder with exits.
EXIT_ENCODER = (
  ("embed/embedding", ("vocab", "embed")),
  ("pos", (None, "embed")),
  *prefixed("layers", stacked(_EXIT_ENCODER_LAYER)),
  *prefixed("heads", stacked(_EXIT_ENCODER_HEAD)),
)


def _mamba_mixer(*, biases: bool) -> Table:
  """A Mamba-1 mixer: in_proj D -> 2E (x and gate), a depthwise conv over
  E, x_proj E -> R + 2S (dt, B, C), dt_proj R -> E, A [E, S], D [E];
  in_proj and out_proj have biases when `biases` (`MambaConfig.use_bias`,
  off in the DYNAMAX exits)."""
  in_proj = linear("in_proj", "embed", "mlp")
  out_proj = linear("out_proj", "mlp", "embed")
  return (
    *(in_proj if biases else in_proj[:1]),
    ("conv1d/weight", ("mlp", None)),
    ("conv1d/bias", ("mlp",)),
    ("x_proj/kernel", ("mlp", None)),
    *linear("dt_proj", None, "mlp"),
    ("A_log", ("mlp", "state")),
    ("D", ("mlp",)),
    *(out_proj if biases else out_proj[:1]),
  )


# Mamba-2: in_proj D -> (z, xBC, dt) fused, conv over xBC, per-head A, D
# and dt bias, a gated norm over E.
_MAMBA2_MIXER = (
  *linear("in_proj", "embed", "mlp"),
  ("conv1d/weight", ("mlp", None)),
  ("conv1d/bias", ("mlp",)),
  ("(A_log|D|dt_bias)", ("heads",)),
  ("norm/weight", ("mlp",)),
  *linear("out_proj", "mlp", "embed"),
)


def _ssm_lm(mixer: Table) -> Table:
  """`MambaLMBase`: embeddings, L stacked blocks, norm_f, LM head."""
  block = (("norm/scale", ("embed",)), *prefixed("mixer", mixer))
  return (
    ("embeddings/embedding", ("vocab", "embed")),
    *prefixed("layers", stacked(block)),
    ("norm_f/scale", ("embed",)),
    ("lm_head_linear/kernel", ("embed", "vocab")),  # absent when tied
  )


MAMBA = _ssm_lm(_mamba_mixer(biases=True))
MAMBA2 = _ssm_lm(_MAMBA2_MIXER)

_VIT_BLOCK = (
  ("(attn_norm|mlp_norm)/(scale|bias)", ("embed",)),
  *linear("qkv", "embed", "heads"),  # [D, 3D]
  *linear("attn_out", "heads", "embed"),
  *linear("mlp_in", "embed", "mlp"),
  *linear("mlp_out", "mlp", "embed"),
)
VIT = (
  *linear("patch_embed", None, "embed"),
  ("(cls_token|pos_embed)", (None, None, "embed")),  # [1, 1 or N+1, D]
  *prefixed("blocks", stacked(_VIT_BLOCK)),
  ("norm/(scale|bias)", ("embed",)),
  *linear("head", "embed", None),
)

# StagedCNN (basic and inverted-residual blocks) and EfficientNet-Lite:
# ConvBN units of a conv [k, k, Cin, Cout] (Cin = 1 in a depthwise conv)
# and a BatchNorm over Cout (its running mean and var included).
_CONV_BN = r"(stem_conv|head_conv|stages/\d+/\d+/\w+)"
CNN = (
  (
    rf"{_CONV_BN}/conv/kernel",
    ("spatial", "spatial", "conv_in", "conv_out"),
  ),
  (rf"{_CONV_BN}/norm/(scale|bias|mean|var)", ("conv_out",)),
  *linear("(classifier|fc)", "conv_in", None),
)
MULTI_EXIT_CNN = (
  *prefixed("cnn", CNN),
  *linear(f"exits/{LAYER}", "conv_in", None),
)

# `jaxexit.methods.dynamax.ExitClassifiers`: per exit a score head and a
# norm, and an MLP (D -> F -> D) or a Mamba stack of width Dc (D -> Dc ->
# D, its blocks naming Dc "embed"); the "lm_head" kind has score heads only.
_DYNAMAX_EXITS = (
  *linear(f"score_heads/{LAYER}", "embed", None),
  (f"exits/{LAYER}/norm/scale", ("embed",)),
)
DYNAMAX_MLP_EXITS = (
  *_DYNAMAX_EXITS,
  *linear(f"exits/{LAYER}/up", "embed", "mlp"),
  *linear(f"exits/{LAYER}/down", "mlp", "embed"),
)
DYNAMAX_MAMBA_EXITS = (
  *_DYNAMAX_EXITS,
  *linear(f"exits/{LAYER}/down", "embed", None),
  *linear(f"exits/{LAYER}/up", None, "embed"),
  *prefixed(
    f"exits/{LAYER}/blocks/{LAYER}",
    (
      ("norm/scale", ("embed",)),
      *prefixed("mixer", _mamba_mixer(biases=False)),
    ),
  ),
)

FAMILY_AXES: Mapping[str, Table] = {
  "bert": BERT,  # BertEncoder (BERT, RoBERTa), AlbertEncoder
  "llama": LLAMA,  # LlamaLM (Llama, Mistral, Qwen2)
  "mamba": MAMBA,
  "mamba2": MAMBA2,
  "vit": VIT,
  "cnn": CNN,  # StagedCNN, EfficientNetLite
  "multi_exit_cnn": MULTI_EXIT_CNN,
  "clip_vision": CLIP_VISION,
  "llava": LLAVA,
  "feature_llava": FEATURE_LLAVA,
  "exit_classifier": EXIT_CLASSIFIER,
  "exit_encoder": EXIT_ENCODER,
  "dynamax_mlp_exits": DYNAMAX_MLP_EXITS,
  "dynamax_mamba_exits": DYNAMAX_MAMBA_EXITS,
}
