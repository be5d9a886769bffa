"""LLaVA: a CLIP vision tower, a 2-layer MLP projector and a Llama LM.

Liu et al. 2023 (LLaVA) and Liu et al. 2024 ("Improved Baselines with
Visual Instruction Tuning", LLaVA-1.5), in the layout of Hugging Face's
`LlavaForConditionalGeneration`: image features are CLIP's hidden state
`vision_feature_layer` (-2, the penultimate block) without the class token
(select strategy "default"; "full" keeps it), mapped to the LM width by
`linear_2(gelu(linear_1(x)))`, and written into the LM's input embeddings
at the image placeholder tokens. The LM is `jaxexit.models.llama.LlamaLM`
(Vicuna-7B-v1.5 for LLaVA-1.5-7B), run from those embeddings by
`LlamaLM.forward_embeddings`. In float32 the logits match transformers
within 1e-5 (tests; about 1e-6 measured).

Placeholders. transformers 5's LLaVA processor expands every `<image>` of
the prompt to N copies of `image_token_id` (N = 576 for CLIP ViT-L/14 at
336 px), so each row of token ids holds exactly N placeholders, one per
image embedding. `merge_embeddings` fills them with static shapes, gemma
style: the k-th placeholder of a row gathers image embedding k through a
cumulative sum of the placeholder mask, with no data-dependent shape. One
image per row: `images` is [B, S, S, 3].

Axes: B batch, T tokens, N image tokens per row, D LM width, Dv vision
width (`ClipVisionConfig.width`), V vocabulary; images are [B, S, S, 3]
pixels (S = `image_size`, channels last).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import DTypeLike

from jaxexit import checks
from jaxexit.models.bert import ACTIVATIONS, make_linear
from jaxexit.models.clip_vision import ClipVision, ClipVisionConfig
from jaxexit.models.llama import LlamaConfig, LlamaLM, LlamaOutput
from jaxexit.typing import Array, Bool, Float, Int

SELECT_STRATEGIES = ("default", "full")

# transformers' `LlamaConfig` defaults for the keys `LlamaConfig.from_hf`
# requires: llava-hf's config.json lists only what differs from them.
_HF_TEXT_DEFAULTS = dict(
  model_type="llama",
  vocab_size=32000,
  hidden_size=4096,
  intermediate_size=11008,
  num_hidden_layers=32,
  num_attention_heads=32,
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LlavaConfig:
  """Sizes of `LlavaLM` (HF `LlavaConfig` names in parentheses).

  Attributes:
    vision: the CLIP vision tower (`vision_config`).
    text: the language model (`text_config`); its dtypes are also the
      projector's.
    projector_act: activation between the projector's two linears
      (`projector_hidden_act`), a key of `bert.ACTIVATIONS`.
    vision_feature_layer: index of the CLIP hidden state fed to the
      projector, into the L + 1 hidden states (-2: the penultimate block).
    vision_feature_select_strategy: "default" drops the class token (N = P),
      "full" keeps it (N = P + 1).
    image_token_id: the placeholder token id (`image_token_index`).
  """

  vision: ClipVisionConfig
  text: LlamaConfig
  projector_act: str = "gelu"
  vision_feature_layer: int = -2
  vision_feature_select_strategy: str = "default"
  image_token_id: int = 32000

  def __post_init__(self):
    if not isinstance(self.vision, ClipVisionConfig):
      raise ValueError(
        f"LlavaConfig.vision must be a ClipVisionConfig; got {self.vision!r}"
      )
    if not isinstance(self.text, LlamaConfig):
      raise ValueError(
        f"LlavaConfig.text must be a LlamaConfig; got {self.text!r}"
      )
    checks.one_of(
      "LlavaConfig.projector_act", self.projector_act, sorted(ACTIVATIONS)
    )
    checks.one_of(
      "LlavaConfig.vision_feature_select_strategy",
      self.vision_feature_select_strategy,
      SELECT_STRATEGIES,
    )
    self.vision.blocks_before(self.vision_feature_layer)
    checks.positive_int(
      "LlavaConfig.image_token_id", self.image_token_id, minimum=0
    )
    if self.image_token_id >= self.text.vocab_size:
      raise ValueError(
        f"LlavaConfig.image_token_id={self.image_token_id} must be < "
        f"text.vocab_size={self.text.vocab_size}"
      )

  @property
  def num_image_tokens(self) -> int:
    """N, image embeddings (and placeholders) per image."""
    drop_cls = self.vision_feature_select_strategy == "default"
    return self.vision.num_patches + (not drop_cls)

  @classmethod
  def from_hf(
    cls,
    hf: dict,
    *,
    dtype: DTypeLike = jnp.float32,
    param_dtype: DTypeLike = jnp.float32,
  ) -> "LlavaConfig":
    """Reads a Hugging Face LLaVA `config.json` dict.

    Keys the file omits take transformers' defaults (llava-hf's files list
    only what differs from `LlamaConfig` / `CLIPVisionConfig`).

    Args:
      hf: the parsed `config.json`.
      dtype: compute dtype of the vision tower, projector and LM.
      param_dtype: their parameter dtype.

    Raises:
      ValueError: another model_type, no vision_config, several feature
        layers, a bias-free projector, or an unsupported sub-config.
    """
    if hf.get("model_type") != "llava":
      raise ValueError(
        f"config.json model_type={hf.get('model_type')!r}; expected 'llava'"
      )
    if "vision_config" not in hf:
      raise ValueError("config.json has no vision_config")
    layer = hf.get("vision_feature_layer", -2)
    if not isinstance(layer, int):
      raise ValueError(
        f"vision_feature_layer={layer!r} unsupported; only one layer (an int)"
      )
    if not hf.get("multimodal_projector_bias", True):
      raise ValueError("multimodal_projector_bias=False unsupported")
    text = {**_HF_TEXT_DEFAULTS, **(hf.get("text_config") or {})}
    tie = bool(hf.get("tie_word_embeddings") or text.get("tie_word_embeddings"))
    dtypes = dict(dtype=dtype, param_dtype=param_dtype)
    return cls(
      vision=ClipVisionConfig.from_hf(hf["vision_config"], **dtypes),
      text=LlamaConfig.from_hf(text, tie_embeddings=tie, **dtypes),
      projector_act=hf.get("projector_hidden_act", "gelu"),
      vision_feature_layer=layer,
      vision_feature_select_strategy=hf.get(
        "vision_feature_select_strategy", "default"
      ),
      image_token_id=hf.get(
        "image_token_id", hf.get("image_token_index", 32000)
      ),
    )


LLAVA_CONFIGS = {
  # Unit tests: 16 image tokens, vision width 48 != LM width 32, GQA LM.
  "tiny": LlavaConfig(
    vision=ClipVisionConfig(
      image_size=32,
      patch_size=8,
      width=48,
      num_layers=3,
      num_heads=4,
      mlp_dim=96,
    ),
    text=LlamaConfig(
      vocab_size=128,
      d_model=32,
      num_layers=2,
      num_heads=4,
      num_kv_heads=2,
      mlp_hidden=64,
      max_position=64,
    ),
    image_token_id=127,
  ),
  # llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14-336 (576 image tokens) and
  # Vicuna-7B-v1.5 (Llama-2-7B sizes) with 64 extra vocabulary rows.
  "llava-1.5-7b": LlavaConfig(
    vision=ClipVisionConfig(
      image_size=336,
      patch_size=14,
      width=1024,
      num_layers=24,
      num_heads=16,
      mlp_dim=4096,
    ),
    text=LlamaConfig(
      vocab_size=32064,
      d_model=4096,
      num_layers=32,
      num_heads=32,
      mlp_hidden=11008,
      rms_norm_eps=1e-5,
      max_position=4096,
    ),
    image_token_id=32000,
  ),
}


def merge_embeddings(
  text: Float[Array, "B T D"],
  image: Float[Array, "B N D"],
  is_image: Bool[Array, "B T"],
) -> Float[Array, "B T D"]:
  """Writes `image[b, k]` at the k-th True of `is_image[b]`.

  Static shapes: the k-th placeholder's index k is a cumulative sum of the
  mask. Callers check that each row holds exactly N placeholders (see
  `LlavaLM.merge`); otherwise a row with k < N placeholders receives
  `image[b, :k]` and one with k > N repeats `image[b, N - 1]` at the
  surplus placeholders.

  Args:
    text: [B, T, D] token embeddings (kept where `is_image` is False).
    image: [B, N, D] image embeddings, in placeholder order.
    is_image: [B, T] placeholder mask.

  Returns:
    [B, T, D] in `text.dtype`.
  """
  n = image.shape[1]
  slot = jnp.cumsum(is_image, axis=1, dtype=jnp.int32) - 1
  slot = jnp.clip(slot, 0, n - 1)  # [B, T]
  gathered = jnp.take_along_axis(image, slot[:, :, None], axis=1)  # [B, T, D]
  return jnp.where(is_image[:, :, None], gathered.astype(text.dtype), text)


class Projector(nnx.Module):
  """LLaVA-1.5's `mlp2x_gelu`: linear_2(act(linear_1(x))), with biases
  (HF `multi_modal_projector.linear_1/linear_2`).

  `cfg` is a `LlavaConfig`, or any config with `text` and
  `projector_act` when `in_width` gives Dv (features of another backbone,
  `jaxexit.models.feature_llava`).
  """

  def __init__(self, cfg, *, rngs: nnx.Rngs, in_width: int | None = None):
    d = cfg.text.d_model
    in_width = cfg.vision.width if in_width is None else in_width
    self.linear_1 = make_linear(cfg.text, in_width, d, rngs)
    self.linear_2 = make_linear(cfg.text, d, d, rngs)
    self.act = cfg.projector_act

  def __call__(self, x: Float[Array, "B N Dv"]) -> Float[Array, "B N D"]:
    return self.linear_2(ACTIVATIONS[self.act](self.linear_1(x)))


class LlavaLM(nnx.Module):
  """LLaVA: `vision` (CLIP) → `projector` → `lm` (`LlamaLM`).

  Args:
    cfg: sizes.
    rngs: parameter initialisation (weights are usually loaded with
      `jaxexit.models.llava_weights`).
  """

  def __init__(self, cfg: LlavaConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.vision = ClipVision(cfg.vision, rngs=rngs)
    self.projector = Projector(cfg, rngs=rngs)
    self.lm = LlamaLM(cfg.text, rngs=rngs)

  def image_embeddings(
    self, images: Float[Array, "B S S 3"]
  ) -> Float[Array, "B N D"]:
    """Projected CLIP features, one row of N embeddings per image.

    Raises:
      ValueError: if the images are not [B, S, S, 3].
    """
    cfg = self.cfg
    feats = self.vision.features(
      images,
      cfg.vision_feature_layer,
      drop_cls=cfg.vision_feature_select_strategy == "default",
    )
    return self.projector(feats.astype(cfg.text.dtype))  # [B, N, D]

  def merge(
    self, tokens: Int[Array, "B T"], image_emb: Float[Array, "B N D"]
  ) -> Float[Array, "B T D"]:
    """Token embeddings with `image_emb` written at the placeholders.

    Args:
      tokens: [B, T] ids in [0, V) (checked when concrete); each row holds
        exactly N `image_token_id` placeholders (the processor's expanded
        prompt).
      image_emb: [B, N, D], e.g. `image_embeddings(images)`.

    Raises:
      ValueError: if concrete `tokens` have a row whose placeholder count is
        not N. Under `jit` the count cannot be checked; such a row gets the
        `merge_embeddings` fallback (embeddings cut short or repeated).
    """
    checks.token_ids("tokens", tokens, self.cfg.text.vocab_size)
    is_image = tokens == self.cfg.image_token_id
    n = image_emb.shape[1]
    if not isinstance(tokens, jax.core.Tracer):
      counts = np.asarray(is_image).sum(axis=1)
      bad = np.flatnonzero(counts != n)
      if bad.size:
        raise ValueError(
          f"each row of tokens must hold N={n} placeholders "
          f"(image_token_id={self.cfg.image_token_id}); rows "
          f"{bad.tolist()} hold {counts[bad].tolist()}"
        )
    return merge_embeddings(self.lm.embed(tokens), image_emb, is_image)

  def __call__(
    self,
    tokens: Int[Array, "B T"],
    images: Float[Array, "B S S 3"],
    valid: Bool[Array, "B T"] | None = None,
  ) -> LlamaOutput:
    """The unpruned model: logits of the prompt with its image merged in.

    Args:
      tokens: [B, T] ids with N placeholders per row (see `merge`).
      images: [B, S, S, 3] normalised pixels, one image per row.
      valid: [B, T], False at padding (all True when None).

    Returns:
      The LM's `LlamaOutput` (float32 logits [B, T, V], hidden states;
      `hidden_states[0]` is the merged input).
    """
    h = self.merge(tokens, self.image_embeddings(images))
    return self.lm.forward_embeddings(h, valid)
