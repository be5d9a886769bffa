"""Measured: small models' sharded bytes and collectives on 8 devices.

Each model family at a small size (`model_specs`), placed by
`jaxexit.sharding.shard_state` (default rules) on 8 simulated CPU devices
under one mesh (`measure`): bytes per device read from the placed arrays'
shards, the collective volume of one compiled training step
(`sharding_hlo.collective_bytes`), XLA's temporary bytes; and
`activation_check`, the growth of XLA:CPU's temp bytes from T to 2T tokens
against the memory plan's activation formula (`jaxexit.sharding.
workloads.lm_stack`). Part of `benchmarks/sharding.py`, whose docstring
defines every field.
"""

import collections
import contextlib
import dataclasses
import math
import os
import re
import sys
import tempfile

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxexit import models, sharding
from jaxexit.models.llama_weights import LLAMA_CONFIGS
from jaxexit.sharding.workloads import lm_stack
from jaxexit.sharding.logical import path_str
from jaxexit.train import make_train_step
from jaxexit.train.lm import causal_lm_loss
from sharding_hlo import collective_bytes

DEVICES = 8
BATCH = 16
CHECK_TOKENS = 512  # activation_check compares T and 2T


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """One model: builder, sharding family, loss and batch shapes."""

  name: str
  family: str
  build: object  # () -> nnx.Module
  loss: object  # (model, batch, rng) -> (loss, metrics)
  batch: dict  # name -> jax.ShapeDtypeStruct (global)
  about: str
  config: object = None  # LM config: the activation formula's check


def _ce(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _mlm_loss(model, batch, rng):
  """Tied-decoder token loss on BERT's last hidden states."""
  del rng
  hidden, _ = model(batch["tokens"])
  table = model.word_embeddings.embedding[...]
  logits = jnp.einsum(
    "BTD,VD->BTV", hidden[-1], table, preferred_element_type=jnp.float32
  )  # [B, T, V]
  loss = _ce(logits, batch["tokens"])
  return loss, {"loss": loss}


def _vit_loss(model, batch, rng):
  del rng
  loss = _ce(model(batch["images"]), batch["labels"])
  return loss, {"loss": loss}


def _llava_loss(model, batch, rng):
  del rng
  tokens = batch["tokens"]
  logits = model(tokens, batch["images"]).logits[:, :-1]  # [B, T-1, V]
  loss = _ce(logits.astype(jnp.float32), tokens[:, 1:])
  return loss, {"loss": loss}


def _sds(shape, dtype=jnp.int32):
  return jax.ShapeDtypeStruct(shape, dtype)


def model_specs(quick: bool) -> list[ModelSpec]:
  """The measured models: real configs, fewer layers, vocabulary 8192
  (quick: 2 models, 2 layers, vocabulary 4096, 64 tokens)."""
  vocab, t = (4096, 64) if quick else (8192, 128)
  layers = 2 if quick else 4
  llama = dataclasses.replace(
    LLAMA_CONFIGS["smollm2-135m"], num_layers=layers, vocab_size=vocab
  )
  mamba = dataclasses.replace(
    models.MAMBA_CONFIGS["mamba-130m"], num_layers=layers, vocab_size=vocab
  )
  lm_batch = {"tokens": _sds((BATCH, t))}
  specs = [
    ModelSpec(
      "llama",
      "llama",
      lambda: models.LlamaLM(llama, rngs=nnx.Rngs(0)),
      causal_lm_loss,
      lm_batch,
      f"SmolLM2-135M sizes, {layers} layers, V={vocab}",
      llama,
    ),
    ModelSpec(
      "mamba",
      "mamba",
      lambda: models.MambaLM(mamba, rngs=nnx.Rngs(0)),
      causal_lm_loss,
      lm_batch,
      f"Mamba-130m sizes, {layers} layers, V={vocab}",
      mamba,
    ),
  ]
  if quick:
    return specs
  return specs + _more_specs(llama, vocab, t)


def _more_specs(llama, vocab: int, t: int) -> list[ModelSpec]:
  bert = models.BertConfig(vocab_size=vocab, num_layers=2)
  vit = models.VIT_CONFIGS["t2t_vit_7_like"]
  mamba2 = dataclasses.replace(
    models.MAMBA2_CONFIGS["codestral-mamba-7b"],
    vocab_size=vocab,
    d_model=512,
    num_layers=4,
    num_heads=16,
    n_groups=2,
    d_state=64,
    chunk_size=64,
  )
  llava = models.LlavaConfig(
    vision=models.ClipVisionConfig(
      image_size=112,
      patch_size=14,
      width=256,
      num_layers=3,
      num_heads=4,
      mlp_dim=1024,
    ),
    text=dataclasses.replace(llama, num_layers=2),
    image_token_id=vocab - 1,
  )
  n, size = llava.num_image_tokens, vit.image_size
  return [
    ModelSpec(
      "bert",
      "bert",
      lambda: models.BertEncoder(bert, rngs=nnx.Rngs(0)),
      _mlm_loss,
      {"tokens": _sds((BATCH, t))},
      f"BERT-base sizes, 2 layers, V={vocab}",
    ),
    ModelSpec(
      "vit",
      "vit",
      lambda: models.ViT(vit, rngs=nnx.Rngs(0)),
      _vit_loss,
      {
        "images": _sds((BATCH, size, size, 3), jnp.float32),
        "labels": _sds((BATCH,)),
      },
      "ViT t2t_vit_7_like (224 px, D=256, 7 blocks)",
    ),
    ModelSpec(
      "mamba2",
      "mamba2",
      lambda: models.Mamba2LM(mamba2, rngs=nnx.Rngs(0)),
      causal_lm_loss,
      {"tokens": _sds((BATCH, t))},
      f"Codestral-Mamba layout, D=512, 16 heads, 4 layers, V={vocab}",
    ),
    ModelSpec(
      "llava",
      "llava",
      lambda: models.LlavaLM(llava, rngs=nnx.Rngs(0)),
      _llava_loss,
      {
        "tokens": _sds((BATCH, n + 16)),
        "images": _sds((BATCH, 112, 112, 3), jnp.float32),
      },
      f"CLIP D=256 x 3 blocks ({n} image tokens) + the Llama, 2 layers",
    ),
  ]


@contextlib.contextmanager
def _stderr_lines():
  """Collects what XLA's C++ logging writes to fd 2 meanwhile (a list of
  lines, filled on exit)."""
  lines = []
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as f:
    os.dup2(f.fileno(), 2)
    try:
      yield lines
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      f.seek(0)
      lines += f.read().decode(errors="replace").splitlines()


def _per_device(leaves) -> int:
  """The largest per-device sum of shard bytes of `leaves`."""
  per = collections.Counter()
  for leaf in leaves:
    for shard in leaf.addressable_shards:
      per[shard.device] += shard.data.nbytes
  return max(per.values(), default=0)


def _shards(spec, mesh) -> int:
  """Into how many pieces `spec` cuts an array on `mesh`."""
  axes = [a for e in spec for a in ((e,) if isinstance(e, str) else e or ())]
  return math.prod(mesh.shape[a] for a in axes)


def _fallbacks(state, mesh, family) -> list[str]:
  """Arrays whose rule shards a dimension that `logical_spec` replicated."""
  axes = sharding.logical_axes(state, family)
  rules = sharding.DEFAULT_RULES
  out = set()
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    name = path_str(path)
    if name not in axes:
      continue
    spec = tuple(leaf.sharding.spec) + (None,) * leaf.ndim
    for dim, logical in enumerate(axes[name]):
      want = rules.get(logical) if logical else None
      want = (want,) if isinstance(want, str) else tuple(want or ())
      if math.prod(mesh.shape[a] for a in want) > 1 and spec[dim] is None:
        out.add(re.sub(r"/\d+/", "/*/", name))
  return sorted(out)


def measure(spec: ModelSpec, model_state, graphdef, mesh_axes: str) -> dict:
  """One (model, mesh) record: bytes read from the placed arrays, HLO."""
  mesh = sharding.make_mesh(mesh_axes)
  state = sharding.shard_state(model_state, mesh, family=spec.family)
  params, opt = state[0], state[1]
  param_leaves = jax.tree.leaves(params)
  replicated = [x for x in param_leaves if _shards(x.sharding.spec, mesh) == 1]
  batch_sharding = NamedSharding(mesh, P(sharding.DEFAULT_RULES["batch"]))
  batch = {
    k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
    for k, v in spec.batch.items()
  }
  with jax.set_mesh(mesh), _stderr_lines() as xla_log:
    compiled = (
      make_train_step(spec.loss)
      .lower(graphdef, state, batch, jax.random.key(0))
      .compile()
    )
  comm = collective_bytes(compiled.as_text(), DEVICES)
  memory = compiled.memory_analysis()
  total = sum(x.nbytes for x in param_leaves)
  record = {
    "record": "measured",
    "model": spec.name,
    "family": spec.family,
    "mesh": ",".join(f"{a}={n}" for a, n in mesh.shape.items()),
    **dict(mesh.shape),
    "params": sum(x.size for x in param_leaves),
    "param_bytes_total": total,
    "param_bytes_per_device": _per_device(param_leaves),
    "opt_bytes_per_device": _per_device(jax.tree.leaves(opt)),
    "replicated_param_bytes_per_device": sum(x.nbytes for x in replicated),
    "fallbacks": _fallbacks(params, mesh, spec.family),
    "comm_bytes_per_step": comm["bytes"],
    "comm_bytes_by_kind": comm["by_kind"],
    "collectives_per_step": comm["ops"],
    "unknown_trip_counts": comm["unknown_trip_counts"],
    "involuntary_rematerializations": sum(
      "Involuntary full rematerialization" in line for line in xla_log
    ),
    "xla_temp_bytes_per_device": getattr(memory, "temp_size_in_bytes", None),
    "batch": {k: list(v.shape) for k, v in spec.batch.items()},
  }
  del state
  return record


def activation_check(spec: ModelSpec, graphdef, state) -> dict:
  """XLA:CPU's temp bytes at T and 2T tokens against the formula's.

  The difference leaves out what does not grow with T (gradients,
  optimizer temporaries, gathered weights), so it compares activations
  alone; on mesh data=8, BATCH / 8 rows per device.
  """
  mesh = sharding.make_mesh("data=8")
  state = sharding.shard_state(state, mesh, family=spec.family)
  batch_sharding = NamedSharding(mesh, P(sharding.DEFAULT_RULES["batch"]))
  # Below ~256 tokens the optimizer update, not the activations, sets the
  # Llama's temp size (it stays flat from T = 32 to 128).
  t = CHECK_TOKENS
  temps, formula = [], []
  for length in (t, 2 * t):
    tokens = jax.ShapeDtypeStruct((BATCH, length), jnp.int32)
    tokens = jax.ShapeDtypeStruct(
      tokens.shape, tokens.dtype, sharding=batch_sharding
    )
    with jax.set_mesh(mesh):
      compiled = (
        make_train_step(spec.loss)
        .lower(graphdef, state, {"tokens": tokens}, jax.random.key(0))
        .compile()
      )
    temps.append(compiled.memory_analysis().temp_size_in_bytes)
    rows = BATCH // DEVICES
    # the loss runs the model on tokens[:, :-1]
    formula.append(rows * lm_stack(spec.config, length - 1).saved(1, False))
  xla, est = temps[1] - temps[0], formula[1] - formula[0]
  return {
    "record": "activation_check",
    "model": spec.name,
    "mesh": "data=8,fsdp=1,tensor=1",
    "seq_lens": [t, 2 * t],
    "xla_temp_bytes_per_device": temps,
    "xla_temp_delta_bytes": int(xla),
    "formula_delta_bytes": int(est),
    "formula_over_xla": est / xla,
  }
