"""The memory `Workload` of DYNAMAX training (`dynamax_train`).

The backbone is frozen: its parameters are planned, not its gradients or
optimizer state. Two phases:

* feature pass (forward only, `feature_batch` rows): one block's working
  set, the decode cache and the E + 1 kept hidden states per token;
* classifier step (`classifier_batch` rows; kinds `mlp` and `mamba`,
  `lm_head` trains nothing): the classifiers' activations (`mamba`:
  E x layers Mamba-1 blocks at `mamba_width`; `mlp`: E residual MLPs),
  the E exits' float32 logits and gradients and the final layer's
  distribution, and the feature batch itself ((E + 1) D per token).

Usage (`plan_memory` in `jaxexit.sharding.memory_plan`)::

  workload = dynamax_workload(
    LLAMA_CONFIGS["mistral-7b-v0.1"], ExitClassifierConfig(kind="mamba",
    ...), optax.adamw(1e-3), seq_len=512, feature_batch=8,
    classifier_batch=16, name="Mistral-7B")
"""

import dataclasses

import jax.numpy as jnp
import optax
from flax import nnx

from jaxexit.methods.dynamax import ExitClassifierConfig, ExitClassifiers
from jaxexit.sharding.activations import F32, Stack, logits, mamba1_block
from jaxexit.sharding.memory_plan import Phase, Workload
from jaxexit.sharding.workloads import (
  LMConfig,
  abstract_train_state,
  forward_phase,
  frozen_lm,
  lm_family,
)

# Sharding families of the classifiers (`lm_head`'s: its score heads).
FAMILIES = {
  "lm_head": "dynamax_mlp_exits",
  "mlp": "dynamax_mlp_exits",
  "mamba": "dynamax_mamba_exits",
}


def classifier_stack(
  cfg: ExitClassifierConfig, vocab: int, tokens: int
) -> Stack:
  """The classifier step's activations per row (module doc).

  Raises:
    ValueError: kind `lm_head`, which trains nothing.
  """
  e, d = cfg.num_exits, cfg.d_model
  if cfg.kind == "mamba":
    m = cfg.mamba
    layers, width = e * m.num_layers, m.d_model
    block = mamba1_block(m.d_model, m.d_inner, m.d_state, m.dt_rank, F32)
  elif cfg.kind == "mlp":
    f = cfg.hidden
    layers, width = e, d
    block = lambda t: F32 * (2 * d + 2 * f / t)
  else:
    raise ValueError(
      f"kind={cfg.kind!r} trains no parameters; plan 'mlp' or 'mamba'"
    )
  head = lambda t: (e + 1) * (logits(vocab)(t) + F32 * d)
  return Stack(layers, tokens, width, block, head)


def dynamax_workload(
  backbone: LMConfig,
  classifiers: ExitClassifierConfig,
  tx: optax.GradientTransformation,
  *,
  seq_len: int,
  feature_batch: int,
  classifier_batch: int,
  name: str,
) -> Workload:
  """Exit classifiers of one kind trained on a frozen backbone.

  Args:
    backbone: the frozen LM's config (Llama, Mamba or Mamba-2).
    classifiers: the classifiers (kind `lm_head`: the feature pass only).
    tx: their optimizer.
    seq_len: tokens per feature row.
    feature_batch: rows per feature-pass call.
    classifier_batch: rows per classifier step.
    name: what the plan is of.
  """
  if classifiers.d_model != backbone.d_model:
    raise ValueError(
      f"classifiers.d_model={classifiers.d_model} differs from the "
      f"backbone's d_model={backbone.d_model}"
    )
  e = classifiers.num_exits
  trainable = f"{e} {classifiers.kind} exit classifiers"
  if classifiers.kind == "mamba":
    m = classifiers.mamba
    trainable += f" (width {m.d_model}, {m.num_layers} blocks each)"
  phases = {
    "feature pass": forward_phase(
      backbone, batch=feature_batch, tokens=seq_len, kept=e + 1
    )
  }
  if classifiers.kind == "lm_head":
    trainable = "nothing (the lm_head kind is the shared frozen head)"
  else:
    phases["classifier step"] = Phase(
      classifier_batch,
      (classifier_stack(classifiers, backbone.vocab_size, seq_len),),
    )
  return Workload(
    name=name,
    trained=abstract_train_state(
      lambda: ExitClassifiers(classifiers, rngs=nnx.Rngs(0)), tx
    ),
    family=FAMILIES[classifiers.kind],
    phases=phases,
    seq_len=seq_len,
    dtype=jnp.dtype(backbone.dtype).name,
    trainable=trainable,
    frozen=frozen_lm(backbone),
    frozen_family=lm_family(backbone),
  )


def kind_workloads(
  backbone: LMConfig,
  classifiers: ExitClassifierConfig,
  kinds: tuple[str, ...],
  tx: optax.GradientTransformation,
  **kwargs,
) -> list[Workload]:
  """`dynamax_workload` of every kind in `kinds`, `classifiers` giving
  the sizes."""
  return [
    dynamax_workload(
      backbone, dataclasses.replace(classifiers, kind=k), tx, **kwargs
    )
    for k in kinds
  ]
