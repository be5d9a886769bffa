"""Sequence classifiers with an exit after every encoder layer.

One module serves every encoder exit method of encoder_exits.md, over any
backbone with `embed`/`backbone`/`pool` (BERT, RoBERTa, ALBERT, MiniLM):

  PALBERT (§3.1)   shared pooler + ONE shared classifier + Lambda layer on
                   [pooled_n; pooled_{n-1}] ("linear_cat", 3 tanh layers)
  PonderNet (§2)   shared pooler + shared classifier + Lambda layer on
                   pooled_n ("linear", 1 layer)
  PABEE (§4)       shared pooler + a classifier per layer
  DeeBERT (§5)     an off-ramp per layer: own pooler (initialised from the
                   encoder's) + classifier
  BERxiT (§6)      DeeBERT's off-ramps + one shared learned-to-exit Linear

`exit_stack()` returns the `ExitStack` every execution mode runs; the head
output carries `logits [B, C]`, `halt [B]` (λ_n) when there is a Lambda layer
and `score [B]` (u_n) when there is an LTE head. Training passes a dropout
key to `exit_stack` (classifier dropout 0.1 on the pooled vector, and on the
Lambda layer's input, as in PALBERT); inference passes none.

Axes: B batch, T tokens, D width, L layers, C classes (C = 1: regression).
"""

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxexit import checks
from jaxexit.execution.adapter import exit_stack, indexed, layer_module
from jaxexit.execution.stack import ExitStack
from jaxexit.exits.outputs import ExitHeadOutput
from jaxexit.models.bert import mean_pool
from jaxexit.nn.functional import dropout
from jaxexit.typing import Array, Float, PRNGKeyArray

CLASSIFIERS = ("shared", "per_layer", "offramp")
HALTING = (None, "linear_cat", "linear")
# How an exit reads a layer's hidden states (the way the backbone was
# trained; `jaxexit.models.checkpoint_pooling` reads it from a checkpoint):
#   cls_pooler  tanh(W · h[CLS] + b), the checkpoint's trained pooler (BERT,
#               ALBERT, RoBERTa fine-tuning; PALBERT §3.1)
#   mean        the mean of h over non-padding tokens (sentence-transformers
#               checkpoints such as all-MiniLM-L6-v2, trained with it)
#   cls         h[CLS] without the pooler
POOLINGS = ("cls_pooler", "mean", "cls")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EncoderExitHeadsConfig:
  """Which exit heads sit on the encoder.

  Attributes:
    num_classes: C (1 for regression, e.g. STS-B).
    classifier: "shared" (one classifier for every layer), "per_layer" or
      "offramp" (per-layer pooler + classifier).
    halting: the Lambda layer's input, "linear_cat" ([pooled_n;
      pooled_{n-1}], PALBERT), "linear" (pooled_n, PonderNet) or None.
    halting_layers: tanh feature layers of the Lambda layer (PALBERT: 3).
    learned_exit: add BERxiT's shared learned-to-exit head.
    dropout: classifier dropout rate (training only).
    pooling: how every exit pools a layer's hidden states, one of
      `POOLINGS`. DeeBERT/BERxiT off-ramps apply their own Linear + tanh to
      it, initialised from the checkpoint's pooler for "cls_pooler" and
      from the identity otherwise.
  """

  num_classes: int
  classifier: str = "per_layer"
  halting: str | None = None
  halting_layers: int = 3
  learned_exit: bool = False
  dropout: float = 0.1
  pooling: str = "cls_pooler"

  def __post_init__(self):
    checks.positive_int("EncoderExitHeadsConfig.num_classes", self.num_classes)
    checks.one_of(
      "EncoderExitHeadsConfig.classifier", self.classifier, CLASSIFIERS
    )
    checks.one_of("EncoderExitHeadsConfig.halting", self.halting, HALTING)
    checks.one_of("EncoderExitHeadsConfig.pooling", self.pooling, POOLINGS)
    checks.positive_int(
      "EncoderExitHeadsConfig.halting_layers", self.halting_layers, minimum=0
    )
    checks.in_range(
      "EncoderExitHeadsConfig.dropout", self.dropout, 0.0, 1.0, high_open=True
    )


class LambdaLayer(nnx.Module):
  """λ_n = σ(w · f(u_n) + b), f = `depth` × [Linear(in, in), tanh] (§3.1)."""

  def __init__(self, in_features: int, depth: int, *, rngs: nnx.Rngs):
    self.features = nnx.List(
      [nnx.Linear(in_features, in_features, rngs=rngs) for _ in range(depth)]
    )
    self.out = nnx.Linear(in_features, 1, rngs=rngs)

  def __call__(self, u: Float[Array, "B F"]) -> Float[Array, "B"]:
    for layer in self.features:
      u = jnp.tanh(layer(u))
    return jax.nn.sigmoid(self.out(u)[:, 0].astype(jnp.float32))


def stacked_linear(num: int, d_in: int, d_out: int, rngs: nnx.Rngs):
  """`num` independent `Linear(d_in → d_out)` with params stacked on axis 0."""

  @nnx.split_rngs(splits=num)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def make(rngs):
    return nnx.Linear(d_in, d_out, rngs=rngs)

  return make(rngs)


class EncoderExitHeads(nnx.Module):
  """The exit heads alone (the encoder stays a separate module)."""

  def __init__(
    self,
    cfg: EncoderExitHeadsConfig,
    hidden: int,
    num_layers: int,
    pooler: nnx.Linear,
    *,
    rngs: nnx.Rngs,
  ):
    self.cfg = cfg
    c = cfg.num_classes
    if cfg.classifier == "shared":
      self.classifier = nnx.Linear(hidden, c, rngs=rngs)
    else:
      self.classifier = stacked_linear(num_layers, hidden, c, rngs)
    if cfg.classifier == "offramp":
      # DeeBERT initialises every off-ramp pooler from the final pooler;
      # over mean-pooled or raw CLS states (no trained pooler) it starts as
      # the identity.
      self.poolers = stacked_linear(num_layers, hidden, hidden, rngs)
      tile = lambda w: jnp.broadcast_to(w, (num_layers,) + w.shape)
      if cfg.pooling == "cls_pooler":
        kernel, bias = pooler.kernel[...], pooler.bias[...]
      else:
        kernel = jnp.eye(hidden, dtype=pooler.kernel[...].dtype)
        bias = jnp.zeros_like(pooler.bias[...])
      self.poolers.kernel[...] = tile(kernel)
      self.poolers.bias[...] = tile(bias)
    if cfg.halting is not None:
      width = 2 * hidden if cfg.halting == "linear_cat" else hidden
      self.halting = LambdaLayer(width, cfg.halting_layers, rngs=rngs)
    if cfg.learned_exit:
      self.lte = nnx.Linear(hidden, 1, rngs=rngs)


class ExitClassifier(nnx.Module):
  """An encoder with an exit head after every layer.

  Args:
    encoder: a backbone with `embed`, `backbone`, `pool`, `pooler` and
      `cfg.hidden_size` (`BertEncoder`, `AlbertEncoder`).
    cfg: the exit heads.
    rngs: initialisation of the heads.
  """

  def __init__(
    self, encoder: nnx.Module, cfg: EncoderExitHeadsConfig, *, rngs: nnx.Rngs
  ):
    self.encoder = encoder
    self.heads = EncoderExitHeads(
      cfg,
      encoder.cfg.hidden_size,
      encoder.cfg.num_layers,
      encoder.pooler,
      rngs=rngs,
    )

  @property
  def num_layers(self) -> int:
    return self.encoder.cfg.num_layers

  def embed(self, input_ids, token_type_ids=None, attention_mask=None) -> dict:
    """The initial carry: the encoder's, plus `prev_features` for PALBERT.

    `prev_features` [B, D] is the previous layer's `pooling_features`
    (zeros before layer 0); PALBERT's Lambda layer pools it into
    pooled_{n-1}.
    """
    carry = self.encoder.embed(input_ids, token_type_ids, attention_mask)
    if self.heads.cfg.halting == "linear_cat":
      batch, d = input_ids.shape[0], self.encoder.cfg.hidden_size
      carry["prev_features"] = jnp.zeros((batch, d), carry["h"].dtype)
    return carry

  def exit_stack(
    self, *, dropout_key: PRNGKeyArray | None = None
  ) -> tuple[ExitStack, nnx.State]:
    """`(stack, params)` for the execution modes.

    `params["layers"]` are the encoder's layers, `params["heads"]` the exit
    heads (`"heads"`) and the encoder's shared pooler (`"pooler"`).

    Args:
      dropout_key: training only: classifier dropout is drawn from
        `fold_in(dropout_key, layer)`; None at inference.
    """
    layers = self.encoder.exit_layers()
    if self.heads.cfg.halting == "linear_cat":
      layers = dataclasses.replace(
        layers, call=KeepPreviousFeatures(layers.call, self.heads.cfg.pooling)
      )
    head_call = (
      exit_head_output
      if dropout_key is None
      else functools.partial(exit_head_output, dropout_key=dropout_key)
    )
    parts = nnx.Dict(heads=self.heads, pooler=self.encoder.pooler)
    return exit_stack(layers, indexed(parts, layers.num_layers, head_call))


@dataclasses.dataclass(frozen=True)
class KeepPreviousFeatures:
  """A layer call that also stores its input's `pooling_features` in
  `carry["prev_features"]` (zeros at layer 0 are set by `embed`)."""

  call: Callable
  pooling: str

  def __call__(self, layer: nnx.Module, carry: dict) -> dict:
    out = self.call(layer, {"h": carry["h"], "mask": carry["mask"]})
    features = pooling_features(self.pooling, carry["h"], carry["mask"])
    out["prev_features"] = features.astype(carry["prev_features"].dtype)
    return out


def exit_head_output(
  parts: nnx.Dict,
  layer,
  carry: dict,
  *,
  dropout_key: PRNGKeyArray | None = None,
) -> ExitHeadOutput:
  """Exit `layer`'s output from `parts = {"heads": EncoderExitHeads, "pooler":
  the encoder's pooler}`: logits [B, C], `halt` [B] (λ_n) with a Lambda
  layer, `score` [B] (u_n) with a learned-exit head."""
  heads, pooler = parts["heads"], parts["pooler"]
  cfg = heads.cfg
  features = pooling_features(cfg.pooling, carry["h"], carry["mask"])
  if cfg.classifier == "offramp":
    pooled = jnp.tanh(layer_module(heads.poolers, layer)(features))
  else:
    pooled = pool_features(cfg.pooling, features, pooler)
  key = None if dropout_key is None else jax.random.fold_in(dropout_key, layer)
  x = dropout(pooled, cfg.dropout, key)
  if cfg.classifier == "shared":
    logits = heads.classifier(x)
  else:
    logits = layer_module(heads.classifier, layer)(x)
  halt = score = None
  if cfg.halting == "linear":
    halt = heads.halting(x)
  elif cfg.halting == "linear_cat":
    # pooled_{n-1} for the Lambda layer at layer n; pooled_0 := 0.
    prev = pool_features(cfg.pooling, carry["prev_features"], pooler)
    prev = jnp.where(jnp.asarray(layer) == 0, 0.0, prev).astype(x.dtype)
    prev_key = None if key is None else jax.random.fold_in(key, 1)
    halt = heads.halting(
      jnp.concatenate([x, dropout(prev, cfg.dropout, prev_key)], axis=-1)
    )
  if cfg.learned_exit:
    score = jax.nn.sigmoid(heads.lte(pooled)[:, 0].astype(jnp.float32))
  return ExitHeadOutput(
    logits=logits.astype(jnp.float32), halt=halt, score=score
  )


def pooling_features(
  pooling: str, h: Float[Array, "B T D"], mask: Array
) -> Float[Array, "B D"]:
  """The parameter-free part of `pooling`: h[CLS] ("cls", "cls_pooler") or
  the mean over real tokens ("mean")."""
  if pooling == "mean":
    return mean_pool(h, mask, normalize=False).astype(h.dtype)
  return h[:, 0]


def pool_features(
  pooling: str, features: Float[Array, "B D"], pooler: nnx.Linear
) -> Float[Array, "B D"]:
  """`pooling_features` finished as `pooling` (see `POOLINGS`): tanh of the
  checkpoint's pooler for "cls_pooler", unchanged otherwise."""
  return jnp.tanh(pooler(features)) if pooling == "cls_pooler" else features
