"""Sharding: bytes per device and collective traffic; 7B memory plans.

Issue 16 item 7. Nothing here is timed: simulated CPU devices say nothing
about the speed of a pod.

Measured. Each model family, at a small size (`model_specs`), placed by
`jaxexit.sharding.shard_state` (default rules: embed -> fsdp; heads,
kv_heads, mlp, vocab -> tensor) on 8 simulated CPU devices under each mesh
of `MESHES`: data 8 (fsdp 1), fsdp 2, 4, 8 (the rest on data) and tensor 2
with data 4 or fsdp 4. Per (model, mesh):

* `param_bytes_per_device`, `opt_bytes_per_device`: the largest, over the
  8 devices, sum of `addressable_shards` bytes of the model's variables and
  of its `optax.adamw` state (mu, nu, count); read from the placed arrays.
  `replicated_param_bytes_per_device`: the part held by arrays with no
  sharded dimension; `fallbacks`: arrays whose rule names a mesh axis of
  size > 1 that `logical_spec` replicated instead (size not divisible).
* `comm_bytes_per_step`: collective volume of one compiled training step
  (`jaxexit.train.make_train_step`: forward, backward, AdamW update; a
  global batch of 16 split over (data, fsdp)), read from
  `jax.jit(...).lower(...).compile().as_text()` by `collective_bytes`:
  every all-gather, all-reduce, reduce-scatter, all-to-all and
  collective-permute instruction of the per-device (SPMD-partitioned)
  program adds the bytes of its full buffer (the result, summed over a
  tuple result; for a reduce-scatter the operand, result x group size),
  times the number of times it runs: once per iteration inside a while
  loop body (XLA's `known_trip_count`: scanned layers), once per call
  elsewhere. It is what each device hands to collectives per step, not
  wire bytes (a ring all-reduce over n devices moves about 2(n-1)/n of
  it). XLA:CPU forms no reduce-scatter: an FSDP gradient reduction shows
  as an all-reduce of the full gradient then a slice, whose buffer is the
  same as the reduce-scatter's operand.
* `xla_temp_bytes_per_device`: the compiled step's temporary buffers
  (`memory_analysis()`, XLA:CPU); `activation_check` compares its growth
  from T = 512 to 1024 tokens with the plan's activation formula (Llama,
  Mamba).

Planned. The three 7B paper presets (HiDrop's LLaVA-1.5-7B, DYNAMAX's
Mistral-7B and Codestral-Mamba-7B) on 8 x 16 GiB and 4 x 95 GiB, each
unsharded (data only), fsdp over all devices, and fsdp with tensor 2
(`memory_plan`). Params and optimizer bytes come from `nnx.eval_shape` of
the real configs, `state_shardings` on a mesh of simulated devices and
`sharding.shard_shape` (no array is allocated). The presets run float32
(parameters, compute, AdamW moments) and have no remat setting: the plan
is at that setting, with a remat-per-block column beside it. Per device:

  total = params + grads + optimizer + activations + gathered

  params     = trained and frozen parameters
  grads      = trained param bytes (sharded like the params)
  activations, gathered: of the phase that needs most
  gathered   = fsdp > 1: one block's weights all-gathered plus its full
               gradient before the reduce-scatter, 2 x block / tensor
               (a forward-only pass: 1 x block / tensor)
  activations (a = 4 bytes, b = B / (data * fsdp) rows per device, t =
  tensor; per token and block of width D, key/value width Dkv, MLP F
  with m saved F-wide tensors (SwiGLU 3, GELU 2), H heads, T keys):
    transformer block  A = a (4D + (2D + 2Dkv + mF) / t) + 4 H T / t
      (block input, both norm outputs, the attention residual; q, k,
      v, attention output, MLP hidden; float32 attention probabilities)
    Mamba-1 block (width D, inner E, state S, rank R)
      A = a (2D + R + 2S + 6E / t) + 4 * 16 E S / t: 16 float32
      [T, E, S] tensors, calibrated (`SCAN_COPIES`): the growth of
      XLA:CPU's temp bytes per token and block on Mamba-130m blocks,
      where `lax.associative_scan` keeps every level of its tree (and the
      backward their cotangents); counting decay, input and states alone
      (3) gave 0.22 of it
    Mamba-2 block (E, G groups, S, H heads of K, chunk Q)
      A = a (2D + (5E + 4GS + H) / t) + 4 (2 H Q + H K S / Q) / t
    head: logits and their gradient, 2 * 4 V / t per token
    no remat: b T (L A + head); remat per block: b T (L a D + A + head)
  HiDrop (every parameter trained): the CLIP tower's blocks over its 577
  tokens plus the LM's over T = 1 + 576 + 12 + 1 prompt positions.
  DYNAMAX (backbone frozen, only the exit classifiers in AdamW): the
  larger of the feature pass (forward only, its batch: each block's
  cache, the kept exit and final features (E + 1) D a per token and one
  block's A) and the classifier step (`classifier_batch`: the feature
  batch, E + 1 heads, and the largest kind, `mamba`, E x blocks Mamba-1
  A at `mamba_width`).

A run fits when total <= the device memory (no allowance for XLA's own
buffers or fragmentation).

  python benchmarks/sharding.py --quick   # 2 models, ~2 min
  python benchmarks/sharding.py           # 6 models, ~5 min, BENCHMARKS.md

Writes `benchmarks/results/sharding{_quick}.json`: one record per
(model, mesh) ("record": "measured"), per checked model
("activation_check") and per (preset, mesh) ("plan").
"""

import argparse
import collections
import contextlib
import dataclasses
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
DEVICES = 8
XLA_FLAGS = f"--xla_force_host_platform_device_count={DEVICES}"

if __name__ == "__main__" and "--child" in sys.argv:
  os.environ["XLA_FLAGS"] = XLA_FLAGS  # before jax is imported
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from jaxexit import models, report, sharding  # noqa: E402
from jaxexit.models.llama_weights import LLAMA_CONFIGS  # noqa: E402
from jaxexit.sharding.logical import path_str  # noqa: E402
from jaxexit.train import make_train_step, split_train_state  # noqa: E402
from jaxexit.train.lm import causal_lm_loss  # noqa: E402

MESHES = (
  "data=8",
  "data=4,fsdp=2",
  "data=2,fsdp=4",
  "fsdp=8",
  "data=4,tensor=2",
  "fsdp=4,tensor=2",
)
BATCH = 16
GiB = 2**30

# --------------------------------------------------------------------------
# Collective volume from compiled HLO text.

COLLECTIVES = (
  "all-gather",
  "all-reduce",
  "reduce-scatter",
  "all-to-all",
  "collective-permute",
)
_DTYPE_BYTES = {
  "pred": 1,
  "s8": 1,
  "u8": 1,
  "s16": 2,
  "u16": 2,
  "f16": 2,
  "bf16": 2,
  "s32": 4,
  "u32": 4,
  "f32": 4,
  "s64": 8,
  "u64": 8,
  "f64": 8,
  "c64": 8,
  "c128": 16,
}
_SHAPE = re.compile(r"\b(pred|[a-z]+\d+\w*)\[([\d,]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\(.*->.*\{\s*$")
_INSTR = re.compile(
  r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<type>.+?)\s(?P<op>[a-z][\w\-]*)\("
)
_CALLS = re.compile(r"\b(calls|to_apply|body|condition)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(\d+)"')


def shape_bytes(text: str) -> int:
  """Bytes of every array shape in an HLO type, e.g. `(f32[2,3], s32[])`."""
  total = 0
  for dtype, dims in _SHAPE.findall(text):
    size = _DTYPE_BYTES.get(dtype, 1 if dtype.startswith("f8") else None)
    if size is None:
      raise ValueError(f"unknown HLO element type {dtype!r} in {text!r}")
    total += size * math.prod(int(d) for d in dims.split(",") if d)
  return total


def _group_size(line: str, devices: int) -> int:
  """Devices per replica group of a collective instruction."""
  if m := re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line):
    sizes = dict(re.findall(r"'([^']+)'=(\d+)", m[1]))
    return math.prod(int(sizes[a]) for a in re.findall(r"'([^']+)'", m[2]))
  if m := re.search(r"replica_groups=\[([\d,]+)\]<=", line):
    return math.prod(int(d) for d in m[1].split(",")[1:])
  if m := re.search(r"replica_groups=\{\{([\d,]*)\}", line):
    return len(m[1].split(","))
  return devices


def collective_bytes(hlo: str, devices: int) -> dict:
  """Collective volume of one run of a compiled HLO module (see module doc).

  Args:
    hlo: `compiled.as_text()` of an SPMD-partitioned module.
    devices: the mesh's device count (a collective with no replica groups
      spans them all).

  Returns:
    `{"bytes": total, "by_kind": {kind: bytes}, "ops": {kind: executions},
    "unknown_trip_counts": while loops without a known trip count (each
    counted once)}`.

  Raises:
    ValueError: an asynchronous collective (`-start`/`-done`, GPU/TPU
      schedules; this reads XLA:CPU's synchronous ones) or an unknown
      element type.
  """
  own = collections.defaultdict(collections.Counter)  # comp -> kind -> B
  ops = collections.defaultdict(collections.Counter)
  edges = collections.defaultdict(list)  # comp -> [(callee, times)]
  current, entry, unknown = None, None, 0
  for line in hlo.splitlines():
    if header := _HEADER.match(line):
      current = header[2]
      entry = current if header[1] else entry
      continue
    if current is None or not (m := _INSTR.match(line)):
      continue
    op = m["op"]
    if op.removesuffix("-start").removesuffix("-done") in COLLECTIVES and (
      op not in COLLECTIVES
    ):
      raise ValueError(f"asynchronous collective {op!r} is not counted")
    if op in COLLECTIVES:
      size = shape_bytes(m["type"])
      if op == "reduce-scatter":
        size *= _group_size(line, devices)
      own[current][op] += size
      ops[current][op] += 1
    times = 1
    if op == "while":
      trip = _TRIP.search(line)
      unknown += trip is None
      times = int(trip[1]) if trip else 1
    for field, callee in _CALLS.findall(line):
      edges[current].append((callee, times if field == "body" else 1))
    for branches in _BRANCHES.findall(line):
      for callee in re.findall(r"%?([\w.\-]+)", branches):
        edges[current].append((callee, 1))
  runs = _run_counts(entry, edges)
  by_kind, count = collections.Counter(), collections.Counter()
  for comp, n in runs.items():
    for kind, size in own[comp].items():
      by_kind[kind] += n * size
      count[kind] += n * ops[comp][kind]
  return {
    "bytes": sum(by_kind.values()),
    "by_kind": dict(sorted(by_kind.items())),
    "ops": dict(sorted(count.items())),
    "unknown_trip_counts": unknown,
  }


def _run_counts(entry: str, edges: dict) -> collections.Counter:
  """How often each computation runs per run of `entry` (a call DAG)."""
  order, seen = [], set()

  def visit(comp):  # post-order: callees before their callers
    seen.add(comp)
    for callee, _ in edges.get(comp, ()):
      if callee not in seen:
        visit(callee)
    order.append(comp)

  visit(entry)
  runs = collections.Counter({entry: 1})
  for comp in reversed(order):
    for callee, times in edges.get(comp, ()):
      runs[callee] += runs[comp] * times
  return runs


# --------------------------------------------------------------------------
# Measured: small models on 8 simulated devices.


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


# --------------------------------------------------------------------------
# Planned: the 7B paper presets on meshes of 16 GiB and 95 GiB devices.

PLAN_MESHES = (  # (devices, GiB per device, meshes)
  (8, 16, ("data=8", "fsdp=8", "fsdp=4,tensor=2")),
  (4, 95, ("data=4", "fsdp=4", "fsdp=2,tensor=2")),
)
A = 4  # bytes per element: every preset computes in float32
# float32 [T, E, S] tensors a Mamba-1 block's backward keeps per token:
# measured, the growth of XLA:CPU's temp bytes from T = 512 to 1024 on the
# quick Mamba (2 Mamba-130m blocks, 2 rows per device) is 1.54 MiB per
# token and block, 16.4 x 4 E S bytes (lax.associative_scan keeps every
# level of its tree, and the backward their cotangents).
SCAN_COPIES = 16
CHECK_TOKENS = 512  # activation_check compares T and 2T


def transformer_block(d, dkv, f, m, heads, keys):
  """Saved bytes per token of one attention + MLP block (module doc)."""
  return lambda t: (
    A * (4 * d + (2 * d + 2 * dkv + m * f) / t) + (4 * heads * keys / t)
  )


def mamba1_block(c):
  d, e, s, r = c.d_model, c.d_inner, c.d_state, c.dt_rank
  return lambda t: (
    A * (2 * d + r + 2 * s + 6 * e / t) + (4 * SCAN_COPIES * e * s / t)
  )


def mamba2_block(c):
  e, gs, h = c.d_inner, c.n_groups * c.d_state, c.num_heads
  q = c.chunk_size
  return lambda t: (
    A * (2 * c.d_model + (5 * e + 4 * gs + h) / t)
    + 4 * (2 * h * q + h * c.head_dim * c.d_state / q) / t
  )


def _no_cache(t):
  return 0.0


@dataclasses.dataclass(frozen=True)
class Stack:
  """`layers` blocks over `tokens` positions per row.

  `block(t)`: saved bytes per token and block at tensor size t; `head(t)`:
  bytes per token after the last block (logits and their gradient);
  `forward`: a forward-only pass, which holds one block's working set.
  """

  layers: int
  tokens: int
  width: int
  block: object
  head: object = _no_cache
  forward: bool = False

  def saved(self, t: int, remat: bool) -> float:
    """Bytes per row the pass keeps (a backward pass: module doc)."""
    if self.forward:
      return self.tokens * (self.block(t) + self.head(t))
    kept = self.layers * (A * self.width if remat else self.block(t))
    return self.tokens * (kept + (self.block(t) if remat else 0) + self.head(t))


def _logits(vocab):
  """Float32 logits and their gradient, per token."""
  return lambda t: 2 * 4 * vocab / t


def _planned_bytes(tree, mesh, family) -> int:
  """Per-device bytes of an abstract tree, from its shards' shapes (every
  device holds an equal shard: `logical_spec` shards only what divides)."""
  shardings = sharding.state_shardings(tree, mesh, family=family)
  return sum(
    math.prod(s.shard_shape(leaf.shape)) * leaf.dtype.itemsize
    for leaf, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings))
  )


def _largest_block(tree, family) -> int:
  """Global bytes of the largest block (`layers/i`, `blocks/i` or one
  slice of a stacked `layers` axis)."""
  axes = sharding.logical_axes(tree, family)
  blocks = collections.Counter()
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    name, size = path_str(path), leaf.size * leaf.dtype.itemsize
    if m := re.match(r"(.*?(?:layers|blocks))/(\d+)/", name):
      blocks[m[1], m[2]] += size
    elif axes.get(name, (None,))[0] == "layers":
      blocks[name.split("/layers/")[0], "stacked"] += size / leaf.shape[0]
  return max(blocks.values(), default=0)


def _abstract(build, tx=None):
  """`nnx.eval_shape` of a model's state (or its train state with `tx`)."""
  if tx is None:
    return nnx.eval_shape(lambda: nnx.state(build(), nnx.Param))
  return nnx.eval_shape(lambda: split_train_state(build(), tx))[1]


def plan_presets() -> list[dict]:
  """The three paper presets as `memory_plan` reads them: the trained
  (and frozen) abstract states, and per phase its batch, the blocks
  whose activations it keeps and which block fsdp gathers."""
  return [_hidrop_preset(), *_dynamax_presets()]


def _hidrop_preset() -> dict:
  from experiments.hidrop import configs
  from jaxexit.data import QUESTION_LEN

  h = configs.get_config("paper")
  lv, tx = h.model, optax.adamw(h.learning_rate)
  v, lm = lv.vision, lv.text
  prompt = 1 + lv.num_image_tokens + QUESTION_LEN + 1  # bos, image, q, cue
  patches = (v.image_size // v.patch_size) ** 2 + 1  # + class token
  clip = transformer_block(v.width, v.width, v.mlp_dim, 2, v.num_heads, patches)
  dkv = lm.num_kv_heads * lm.head_dim
  text = transformer_block(
    lm.d_model, dkv, lm.mlp_hidden, 3, lm.num_heads, prompt
  )
  stacks = [
    Stack(v.blocks_before(lv.vision_feature_layer), patches, v.width, clip),
    Stack(lm.num_layers, prompt, lm.d_model, text, _logits(lm.vocab_size)),
  ]
  return {
    "model": "hidrop paper: LLaVA-1.5-7B",
    "trainable": "all",
    "trained": _abstract(lambda: models.LlavaLM(lv, rngs=nnx.Rngs(0)), tx),
    "trained_family": "llava",
    "phases": {
      "train step": {
        "batch": h.batch_size,
        "stacks": stacks,
        "gather": "trained",
        "cache_row": _no_cache,
      }
    },
    "seq_len": prompt,
  }


def _backbone_forward(family, cfg, t, exits):
  """(per-token Stack of the feature pass, per-row cache bytes(t))."""
  if family == "llama":
    dkv = cfg.num_kv_heads * cfg.head_dim
    block = transformer_block(
      cfg.d_model, dkv, cfg.mlp_hidden, 3, cfg.num_heads, t
    )
    cache_token = lambda tp: cfg.num_layers * 2 * A * dkv / tp
    cache_row = _no_cache
  else:
    block = mamba2_block(cfg)
    cache_token = _no_cache
    state = cfg.conv_dim * (cfg.d_conv - 1) + (
      cfg.num_heads * cfg.head_dim * cfg.d_state
    )
    cache_row = lambda tp: cfg.num_layers * 4 * state / tp
  kept = (len(exits) + 1) * cfg.d_model * A
  working = lambda tp: block(tp) + cache_token(tp) + kept
  return Stack(1, t, cfg.d_model, working, forward=True), cache_row


def _dynamax_presets() -> list[dict]:
  import inspect

  from experiments.dynamax import configs
  from jaxexit.methods import dynamax_train
  from jaxexit.methods.dynamax import ExitClassifierConfig, ExitClassifiers

  d = configs.get_config("paper")
  params = inspect.signature(dynamax_train.exit_features).parameters
  out = []
  for name, family, cfg, build in (
    ("Mistral-7B", "llama", LLAMA_CONFIGS["mistral-7b-v0.1"], models.LlamaLM),
    (
      "Codestral-Mamba-7B",
      "mamba2",
      models.MAMBA2_CONFIGS["codestral-mamba-7b"],
      models.Mamba2LM,
    ),
  ):
    exits = d.exit_layers(cfg.num_layers)
    ccfg = ExitClassifierConfig(
      kind="mamba",  # the largest kind the preset trains
      num_exits=len(exits),
      d_model=cfg.d_model,
      mamba_width=d.mamba_width,
      mamba_layers=d.mamba_layers,
    )
    m1, t = ccfg.mamba, d.feature_len
    feature, cache_row = _backbone_forward(family, cfg, t, exits)
    # The exits' logits and gradients, and the final layer's distribution;
    # the feature batch itself (E + 1 hidden states per token).
    heads = lambda tp, e=len(exits), c=cfg: (
      (e + 1) * (_logits(c.vocab_size)(tp) + c.d_model * 4)
    )
    classifier = Stack(
      len(exits) * m1.num_layers, t, m1.d_model, mamba1_block(m1), heads
    )
    out.append(
      {
        "model": f"dynamax paper: {name}",
        "trainable": f"exit classifiers ({len(exits)} x mamba "
        f"{m1.d_model} x {m1.num_layers})",
        "trained": _abstract(
          lambda c=ccfg: ExitClassifiers(c, rngs=nnx.Rngs(0)),
          optax.adamw(d.classifier_lr),
        ),
        "trained_family": "dynamax_mamba_exits",
        "frozen": _abstract(lambda c=cfg, b=build: b(c, rngs=nnx.Rngs(0))),
        "frozen_family": family,
        "phases": {
          "feature pass": {
            "batch": params["batch_size"].default,
            "stacks": [feature],
            "gather": "frozen",
            "cache_row": cache_row,
          },
          "classifier step": {
            "batch": d.classifier_batch,
            "stacks": [classifier],
            "gather": "trained",
            "cache_row": _no_cache,
          },
        },
        "seq_len": t,
      }
    )
  return out


def memory_plan(preset: dict, mesh_axes: str, devices: int, gib: int):
  """Per-device bytes of one preset on one mesh (formulas: module doc).

  Args:
    preset: one entry of `plan_presets()`.
    mesh_axes: e.g. "fsdp=8".
    devices: devices of the mesh (the first ones of `jax.devices()`).
    gib: memory per device, GiB.

  Returns:
    A "plan" record: params, grads, optimizer, and for the phase that
    needs most, its activations and gathered block; totals and whether
    they fit, at the preset's setting (no remat) and with per-block remat.
  """
  mesh = sharding.make_mesh(mesh_axes, devices=jax.devices()[:devices])
  rows, tensor = mesh.shape["data"] * mesh.shape["fsdp"], mesh.shape["tensor"]
  trained, family = preset["trained"], preset["trained_family"]
  grads = _planned_bytes(trained[0], mesh, family)
  opt = _planned_bytes(trained[1], mesh, family)
  params = grads
  blocks = {"trained": 2 * _largest_block(trained[0], family)}
  if "frozen" in preset:
    frozen, family = preset["frozen"], preset["frozen_family"]
    params += _planned_bytes(frozen, mesh, family)
    blocks["frozen"] = _largest_block(frozen, family)
  base = params + grads + opt
  plan = {}
  for remat in (False, True):
    need = {}
    for name, phase in preset["phases"].items():
      if phase["batch"] % rows:
        raise ValueError(
          f"{preset['model']}: {name} batch {phase['batch']} does not "
          f"split over {rows} devices"
        )
      per_row = phase["cache_row"](tensor) + sum(
        stack.saved(tensor, remat) for stack in phase["stacks"]
      )
      acts = phase["batch"] // rows * per_row
      gathered = (
        blocks[phase["gather"]] / tensor if mesh.shape["fsdp"] > 1 else 0
      )
      need[name] = (acts, gathered)
    plan[remat] = max(need.items(), key=lambda kv: sum(kv[1]))
  capacity = gib * GiB
  (phase, (acts, gathered)), (_, (acts_r, gathered_r)) = plan.values()
  return {
    "record": "plan",
    "model": preset["model"],
    "mesh": ",".join(f"{a}={n}" for a, n in mesh.shape.items()),
    **dict(mesh.shape),
    "devices": devices,
    "device_gib": gib,
    "trainable": preset["trainable"],
    "dtype": "float32",
    "remat": "none (preset)",
    "seq_len": preset["seq_len"],
    "batch": {name: p["batch"] for name, p in preset["phases"].items()},
    "param_bytes_per_device": int(params),
    "grad_bytes_per_device": int(grads),
    "opt_bytes_per_device": int(opt),
    "phase": phase,
    "gathered_bytes_per_device": int(gathered),
    "activation_bytes_per_device": int(acts),
    "total_bytes_per_device": int(base + acts + gathered),
    "fits": bool(base + acts + gathered <= capacity),
    "activation_remat_bytes_per_device": int(acts_r),
    "total_remat_bytes_per_device": int(base + acts_r + gathered_r),
    "fits_remat": bool(base + acts_r + gathered_r <= capacity),
  }


# --------------------------------------------------------------------------
# Driver: the measurements need 8 devices, so they run in a child process.


def formula_stack(cfg, t: int) -> Stack:
  """The plan's formula for a measured Llama or Mamba LM over t tokens."""
  if isinstance(cfg, models.MambaConfig):
    block = mamba1_block(cfg)
  else:
    dkv = cfg.num_kv_heads * cfg.head_dim
    block = transformer_block(
      cfg.d_model, dkv, cfg.mlp_hidden, 3, cfg.num_heads, t
    )
  return Stack(cfg.num_layers, t, cfg.d_model, block, _logits(cfg.vocab_size))


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
    formula.append(rows * formula_stack(spec.config, length - 1).saved(1, 0))
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


def collect(quick: bool, log=print) -> list[dict]:
  """Every measured and planned record (needs 8 devices)."""
  if jax.device_count() != DEVICES:
    raise RuntimeError(
      f"collect needs {DEVICES} devices (XLA_FLAGS={XLA_FLAGS}); "
      f"found {jax.device_count()}: call run()"
    )
  records = []
  for spec in model_specs(quick):
    graphdef, state = split_train_state(spec.build(), optax.adamw(1e-3))
    for mesh in MESHES:
      record = measure(spec, state, graphdef, mesh)
      records.append(record | {"about": spec.about})
      log(
        f"{spec.name} {mesh}: params "
        f"{record['param_bytes_per_device'] / 2**20:.1f} MiB/device, "
        f"comm {record['comm_bytes_per_step'] / 2**20:.1f} MiB/step"
      )
    if spec.config is not None:
      records.append(activation_check(spec, graphdef, state))
      log(f"{spec.name}: formula / XLA {records[-1]['formula_over_xla']:.2f}")
    del state
    jax.clear_caches()
  for preset in plan_presets():
    for devices, gib, meshes in PLAN_MESHES:
      for mesh in meshes:
        records.append(memory_plan(preset, mesh, devices, gib))
    log(f"plan {preset['model']}")
  return records


def run(quick: bool, log=print) -> list[dict]:
  """`collect` here if this process has 8 devices, else in a child
  started with 8 simulated CPU devices."""
  if jax.device_count() == DEVICES and jax.default_backend() == "cpu":
    return collect(quick, log)
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / "records.json"
    command = [sys.executable, __file__, "--child", "--out", str(out)]
    env = dict(
      os.environ,
      XLA_FLAGS=XLA_FLAGS,
      JAX_PLATFORMS="cpu",
      PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    with open(pathlib.Path(tmp) / "stderr", "w+") as err:
      proc = subprocess.Popen(
        command + (["--quick"] if quick else []),
        env=env,
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
      )
      for line in proc.stdout:  # the child's progress, as it comes
        log(line.rstrip())
      if proc.wait():
        err.seek(0)
        raise RuntimeError(f"sharding child failed:\n{err.read()[-4000:]}")
    return json.loads(out.read_text())


def _mib(n) -> str:
  return "-" if n is None else f"{n / 2**20:,.1f}"


def _gib(n) -> str:
  return f"{n / GiB:,.2f}"


def _measured_table(measured: list[dict]) -> str:
  rows = []
  for r in measured:
    kinds = ", ".join(
      f"{k} {_mib(v)}" for k, v in r["comm_bytes_by_kind"].items()
    )
    rows.append(
      [
        r["model"],
        r["mesh"].replace(",", " "),
        f"{r['params'] / 1e6:.1f}M",
        _mib(r["param_bytes_per_device"]),
        f"{r['param_bytes_total'] / r['param_bytes_per_device']:.2f}",
        _mib(r["replicated_param_bytes_per_device"]),
        _mib(r["opt_bytes_per_device"]),
        _mib(r["comm_bytes_per_step"]),
        kinds or "-",
        ", ".join(r["fallbacks"]) or "-",
        r["involuntary_rematerializations"],
        _mib(r["xla_temp_bytes_per_device"]),
      ]
    )
  header = [
    "model",
    "mesh",
    "params",
    "param MiB/dev",
    "total/dev",
    "replicated MiB/dev",
    "AdamW MiB/dev",
    "comm MiB/step",
    "comm by kind (MiB)",
    "fallbacks",
    "XLA remats",
    "XLA temp MiB/dev",
  ]
  return report.markdown_table(header, rows)


def _plan_table(plans: list[dict]) -> str:
  rows = [
    [
      p["model"],
      f"{p['devices']} x {p['device_gib']} GiB",
      p["mesh"].replace(",", " "),
      _gib(p["param_bytes_per_device"]),
      _gib(p["grad_bytes_per_device"]),
      _gib(p["opt_bytes_per_device"]),
      p["phase"],
      _gib(p["activation_bytes_per_device"]),
      _gib(p["gathered_bytes_per_device"]),
      _gib(p["total_bytes_per_device"]),
      "yes" if p["fits"] else "no",
      _gib(p["activation_remat_bytes_per_device"]),
      _gib(p["total_remat_bytes_per_device"]),
      "yes" if p["fits_remat"] else "no",
    ]
    for p in plans
  ]
  header = [
    "preset",
    "devices",
    "mesh",
    "params",
    "grads",
    "AdamW",
    "largest phase",
    "activations",
    "gathered",
    "total",
    "fits",
    "act. remat",
    "total remat",
    "fits remat",
  ]
  return report.markdown_table(header, rows)


def render(records: list[dict], quick: bool) -> str:
  """The BENCHMARKS.md section body: the tables and how they were made."""
  by = collections.defaultdict(list)
  for r in records:
    by[r["record"]].append(r)
  abouts = sorted({f"{r['model']}: {r['about']}" for r in by["measured"]})
  checks = "; ".join(
    f"{c['model']} {_mib(c['formula_delta_bytes'])} MiB vs XLA "
    f"{_mib(c['xla_temp_delta_bytes'])} MiB ({c['formula_over_xla']:.2f}x)"
    for c in by["activation_check"]
  )
  batches = "; ".join(
    f"{p['model']}: "
    + ", ".join(f"{k} {v} x {p['seq_len']}" for k, v in p["batch"].items())
    for p in {p["model"]: p for p in by["plan"]}.values()
  )
  return (
    f"8 simulated CPU devices, JAX {jax.__version__}; default rules; "
    f"global batch {BATCH} over (data, fsdp); nothing timed. Models: "
    + "; ".join(abouts)
    + ". `total/dev` = global param bytes / per-device param bytes, read "
    "from the placed arrays' shards; `replicated` = bytes of arrays no "
    "mesh axis splits; `fallbacks` = arrays a rule would shard whose "
    "dimension does not divide; `comm` = bytes one training step "
    "(forward, backward, AdamW) hands to collectives on each device, from "
    "the compiled HLO, loop bodies times their trip counts (XLA:CPU turns "
    "FSDP's reduce-scatters into all-reduces + slices: the same buffer); "
    "`XLA remats` = XLA's 'Involuntary full rematerialization' warnings "
    "while partitioning (a tensor it must replicate, then re-split); "
    "`XLA temp` = the compiled step's temporary buffers on XLA:CPU. "
    "Command: "
    f"`python benchmarks/sharding.py{' --quick' if quick else ''}`.\n\n"
    + _measured_table(by["measured"])
    + "\n\n**7B paper presets, GiB per device.** Float32 parameters, "
    "compute and AdamW moments; the presets set no remat (`act. remat`: "
    "what per-block remat would keep). Params and AdamW: `nnx.eval_shape` "
    "of the real configs through `state_shardings`, shard shapes (nothing "
    "allocated); grads = the trained params; gathered = under fsdp, 2 x "
    "the largest trained block / tensor (1 x the frozen block in a "
    "forward pass). Activations per token and block (t = tensor, 4-byte "
    "elements): transformer 4 (4D + (2D + 2Dkv + mF)/t) + 4HT/t (m = 3 "
    "SwiGLU, 2 GELU; float32 attention probabilities); Mamba-1 "
    "4 (2D + R + 2S + 6E/t) + 64ES/t (16 float32 scan tensors [T, E, S], "
    "calibrated by the Mamba check below); Mamba-2 4 (2D + (5E + 4GS + H)/t) + "
    "4 (2HQ + HKS/Q)/t; logits and their gradient 8V/t per token; times "
    "layers, or with remat 4D per layer plus one block; times tokens and "
    "rows per device. HiDrop trains every parameter (CLIP over 577 "
    "tokens, the LM over 590); DYNAMAX freezes the backbone and trains "
    "the exit classifiers (largest kind: mamba), so its largest phase is "
    "either the feature pass (forward: cache, kept features, one block) or "
    "the classifier step. Batches: " + batches + ". Fits: total <= device "
    "memory, with nothing left for XLA's own buffers. Check of the "
    "formula against XLA:CPU's temp bytes, their growth from T = "
    f"{CHECK_TOKENS} to {2 * CHECK_TOKENS} tokens at data=8 "
    f"({BATCH // DEVICES} rows per device; the Mamba's scan term is "
    "calibrated on it): "
    + (checks or "not run")
    + ".\n\n"
    + _plan_table(by["plan"])
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="2 small models")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--out", type=pathlib.Path, help=argparse.SUPPRESS)
  args = parser.parse_args()
  start = time.perf_counter()
  log = lambda msg: print(f"[{time.perf_counter() - start:5.0f} s] {msg}")
  if args.child:
    records = collect(args.quick, lambda msg: (log(msg), sys.stdout.flush()))
    args.out.write_text(json.dumps(records))
    return
  records = run(args.quick, print)
  text_md = render(records, args.quick)
  print(text_md)
  name = "sharding_quick.json" if args.quick else "sharding.json"
  report.write_json(HERE / "results" / name, records)
  if not args.quick:
    report.write_section(BENCHMARKS_MD, "sharding", text_md)


if __name__ == "__main__":
  main()
