"""`Workload`s of model configs for `jaxexit.sharding.plan_memory`.

Abstract states come from `nnx.eval_shape` (no parameter is allocated, so
a 7B config plans in about a second on any host). Usage::

  workload = llava_train_workload(
    LLAVA_CONFIGS["llava-1.5-7b"], optax.adamw(2e-5), batch=16,
    text_tokens=64, name="LLaVA-1.5-7B")
  plan = plan_memory(workload, abstract_mesh("fsdp=8", 8), 16 * GiB)
  print(plan.describe())
"""

from collections.abc import Callable

import jax.numpy as jnp
import optax
from flax import nnx

from jaxexit.models.clip_vision import ClipVisionConfig
from jaxexit.models.llama import LlamaConfig, LlamaLM
from jaxexit.models.llava import LlavaConfig, LlavaLM
from jaxexit.models.mamba import MambaConfig, MambaLM
from jaxexit.models.mamba2 import Mamba2Config, Mamba2LM
from jaxexit.sharding.activations import (
  F32,
  Rate,
  Stack,
  logits,
  mamba1_block,
  mamba2_block,
  no_bytes,
  transformer_block,
)
from jaxexit.sharding.memory_plan import Phase, Workload
from jaxexit.train import split_train_state
from jaxexit.typing import PyTree

LMConfig = LlamaConfig | MambaConfig | Mamba2Config


def abstract_params(build: Callable[[], nnx.Module]) -> PyTree:
  """`nnx.eval_shape` of a model's parameters (`nnx.Param`)."""
  return nnx.eval_shape(lambda: nnx.state(build(), nnx.Param))


def abstract_train_state(
  build: Callable[[], nnx.Module], tx: optax.GradientTransformation
) -> PyTree:
  """`nnx.eval_shape` of `jaxexit.train.split_train_state(build(), tx)`'s
  state: `{0: model state, 1: optimizer state}`."""
  return nnx.eval_shape(lambda: split_train_state(build(), tx))[1]


def lm_family(cfg: LMConfig) -> str:
  """The sharding family of an LM config."""
  for kind, family in (
    (LlamaConfig, "llama"),
    (MambaConfig, "mamba"),
    (Mamba2Config, "mamba2"),
  ):
    if isinstance(cfg, kind):
      return family
  raise ValueError(
    f"no sharding family for {type(cfg).__name__}; expected a "
    "LlamaConfig, MambaConfig or Mamba2Config"
  )


def elem_bytes(cfg) -> int:
  """Bytes per element of `cfg.dtype`, the compute dtype."""
  return jnp.dtype(cfg.dtype).itemsize


def mamba_block(cfg: MambaConfig | Mamba2Config) -> Rate:
  """A Mamba-1 or Mamba-2 block of `cfg`."""
  a = elem_bytes(cfg)
  if isinstance(cfg, MambaConfig):
    return mamba1_block(cfg.d_model, cfg.d_inner, cfg.d_state, cfg.dt_rank, a)
  return mamba2_block(
    cfg.d_model,
    cfg.d_inner,
    cfg.n_groups * cfg.d_state,
    cfg.num_heads,
    cfg.head_dim,
    cfg.d_state,
    cfg.chunk_size,
    a,
  )


def llama_block(cfg: LlamaConfig, keys: int) -> Rate:
  """A Llama block (SwiGLU, grouped KV) over `keys` positions."""
  return transformer_block(
    cfg.d_model,
    cfg.num_kv_heads * cfg.head_dim,
    cfg.mlp_hidden,
    3,
    cfg.num_heads,
    keys,
    elem_bytes(cfg),
  )


def clip_stack(cfg: ClipVisionConfig, layers: int) -> Stack:
  """The first `layers` CLIP blocks over the patches and class token."""
  tokens = cfg.num_patches + 1
  block = transformer_block(
    cfg.width,
    cfg.width,
    cfg.mlp_dim,
    2,
    cfg.num_heads,
    tokens,
    elem_bytes(cfg),
  )
  return Stack(layers, tokens, cfg.width, block, elem=elem_bytes(cfg))


def lm_stack(
  cfg: LlamaConfig | MambaConfig | Mamba2Config,
  tokens: int,
  *,
  head: bool = True,
) -> Stack:
  """Every block of a Llama, Mamba or Mamba-2 LM over `tokens` positions,
  with its float32 logits (`head`)."""
  if isinstance(cfg, LlamaConfig):
    block = llama_block(cfg, tokens)
  elif isinstance(cfg, MambaConfig | Mamba2Config):
    block = mamba_block(cfg)
  else:
    raise ValueError(
      f"no activation formula for {type(cfg).__name__}; expected a "
      "LlamaConfig, MambaConfig or Mamba2Config"
    )
  return Stack(
    cfg.num_layers,
    tokens,
    cfg.d_model,
    block,
    logits(cfg.vocab_size) if head else no_bytes,
    elem=elem_bytes(cfg),
  )


def llava_train_workload(
  cfg: LlavaConfig,
  tx: optax.GradientTransformation,
  *,
  batch: int,
  text_tokens: int,
  name: str,
) -> Workload:
  """Every parameter of a `LlavaLM` trained on one-image prompts.

  The CLIP tower runs its blocks up to `vision_feature_layer` over the
  patches and class token; the LM runs over `text_tokens` + N image
  tokens with float32 logits at every position.

  Args:
    cfg: the model's config (its dtypes set the plan's).
    tx: the optimizer (its state is planned from its abstract init).
    batch: global rows per step.
    text_tokens: text positions per row (prompt without image tokens).
    name: what the plan is of.
  """
  v, lm = cfg.vision, cfg.text
  seq = text_tokens + cfg.num_image_tokens
  return Workload(
    name=name,
    trained=abstract_train_state(lambda: LlavaLM(cfg, rngs=nnx.Rngs(0)), tx),
    family="llava",
    phases={
      "train step": Phase(
        batch,
        (
          clip_stack(v, v.blocks_before(cfg.vision_feature_layer)),
          lm_stack(lm, seq),
        ),
      )
    },
    seq_len=seq,
    dtype=jnp.dtype(lm.dtype).name,
  )


def feature_pass(cfg: LMConfig, tokens: int, kept: int) -> tuple[Stack, Rate]:
  """A frozen LM's forward pass that keeps `kept` hidden states per token.

  Returns:
    (the pass as a forward `Stack`: one block, its per-token cache and the
    kept states; bytes per row of a recurrent state cache).
  """
  a = elem_bytes(cfg)
  if isinstance(cfg, LlamaConfig):
    block = llama_block(cfg, tokens)
    dkv = cfg.num_kv_heads * cfg.head_dim
    per_token = lambda t: cfg.num_layers * 2 * a * dkv / t
    per_row = no_bytes
  else:
    block = mamba_block(cfg)
    if isinstance(cfg, Mamba2Config):
      state = cfg.conv_dim * (cfg.d_conv - 1) + (
        cfg.num_heads * cfg.head_dim * cfg.d_state
      )
    else:
      state = cfg.d_inner * (cfg.d_conv - 1 + cfg.d_state)
    per_token = no_bytes
    per_row = lambda t: cfg.num_layers * F32 * state / t
  working = lambda t: block(t) + per_token(t) + kept * cfg.d_model * a
  stack = Stack(1, tokens, cfg.d_model, working, forward=True, elem=a)
  return stack, per_row


def frozen_lm(cfg: LMConfig) -> PyTree:
  """Abstract parameters of the LM of `cfg` (Llama, Mamba or Mamba-2)."""
  cls = {"llama": LlamaLM, "mamba": MambaLM, "mamba2": Mamba2LM}[lm_family(cfg)]
  return abstract_params(lambda: cls(cfg, rngs=nnx.Rngs(0)))


def forward_phase(cfg: LMConfig, *, batch: int, tokens: int, kept: int):
  """A `Phase` of `feature_pass` over the frozen part."""
  stack, per_row = feature_pass(cfg, tokens, kept)
  return Phase(batch, (stack,), gather="frozen", cache_row=per_row)
