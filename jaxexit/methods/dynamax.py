"""DYNAMAX exit classifiers for decoder LMs (Transformer or Mamba backbones).

Nogales, Gambella, Roveri, arXiv 2504.20922 (spec `llm_exits.md` §3). No code
is public and only the abstract was readable, so the architecture below is
the spec's reconstruction (§3.2, **unverified** against the PDF):

* `lm_head` (a): the backbone's frozen final norm + LM head on the exit's
  hidden state (CALM's shared head);
* `mlp` (b): a per-exit residual MLP (norm → D→F SiLU → F→D, output
  projection zero-initialised) before the frozen norm + LM head (EE-LLM's
  MLP exits);
* `mamba` (c): the paper's Mamba-as-exit-classifier: a per-exit RMSNorm and
  down-projection D→D_c (the residual stream of a pretrained LM is far from
  unit scale), a small stack of Mamba-1 blocks run causally over
  the exit's hidden states h^(l)_{1:t} (an O(1) recurrent state per decode
  step, carried like a layer cache), an up-projection back to D
  (zero-initialised) added to h^(l), then the frozen norm + LM head.

Every kind also has a per-exit linear "consistency" score (CALM's meta
classifier, `DecodeConfig(rule="learned")`): sigmoid(w·h + b), trained with
class-balanced BCE to predict that the exit's argmax equals the final
layer's. The zero-initialised output projections make every kind start as
the `lm_head` baseline.

The classifiers implement `jaxexit.decoding.exit_heads.DecoderExitHeads`, so the
decoding engine runs them on either backbone, in every state mode.

Axes: B batch, T tokens, D width, F MLP width, V vocabulary, E exits.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxexit import checks
from jaxexit.models.mamba import MambaConfig, MambaMixer
from jaxexit.models.ssm_lm import MambaCache, ResidualBlock
from jaxexit.typing import Array, Bool, Float, Int, PyTree

KINDS = ("lm_head", "mlp", "mamba")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExitClassifierConfig:
  """Sizes of the exit classifiers.

  Attributes:
    kind: one of `KINDS`.
    num_exits: E, one classifier per exit layer.
    d_model: D of the backbone.
    mlp_hidden: F of the `mlp` kind (default 2·D).
    mamba_width: D_c of the `mamba` kind (default min(D, 256)).
    mamba_layers: Mamba blocks per exit (`mamba` kind).
    mamba_state: SSM state size S of those blocks.
  """

  kind: str
  num_exits: int
  d_model: int
  mlp_hidden: int | None = None
  mamba_width: int | None = None
  mamba_layers: int = 1
  mamba_state: int = 16

  def __post_init__(self):
    checks.one_of("kind", self.kind, KINDS)
    checks.positive_int("num_exits", self.num_exits)
    checks.positive_int("d_model", self.d_model)
    checks.positive_int("mamba_layers", self.mamba_layers)
    checks.positive_int("mamba_state", self.mamba_state)
    for name in ("mlp_hidden", "mamba_width"):
      if getattr(self, name) is not None:
        checks.positive_int(name, getattr(self, name))

  @property
  def hidden(self) -> int:
    return self.mlp_hidden or 2 * self.d_model

  @property
  def mamba(self) -> MambaConfig:
    """The Mamba-1 config of the `mamba` kind's blocks (no embeddings)."""
    return MambaConfig(
      vocab_size=1,
      d_model=self.mamba_width or min(self.d_model, 256),
      num_layers=self.mamba_layers,
      d_state=self.mamba_state,
    )


def _zeros_linear(d_in: int, d_out: int, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(
    d_in, d_out, kernel_init=nnx.initializers.zeros_init(), rngs=rngs
  )


class _MLPExit(nnx.Module):
  def __init__(self, cfg: ExitClassifierConfig, rngs: nnx.Rngs):
    self.norm = nnx.RMSNorm(cfg.d_model, rngs=rngs)
    self.up = nnx.Linear(cfg.d_model, cfg.hidden, rngs=rngs)
    self.down = _zeros_linear(cfg.hidden, cfg.d_model, rngs)

  def __call__(self, h):
    return h + self.down(jax.nn.silu(self.up(self.norm(h))))


class _MambaExit(nnx.Module):
  def __init__(self, cfg: ExitClassifierConfig, rngs: nnx.Rngs):
    mcfg = cfg.mamba
    self.config = mcfg
    self.norm = nnx.RMSNorm(cfg.d_model, rngs=rngs)
    self.down = nnx.Linear(cfg.d_model, mcfg.d_model, rngs=rngs)
    self.blocks = nnx.List(
      [
        ResidualBlock(mcfg, MambaMixer(mcfg, rngs=rngs), rngs=rngs)
        for _ in range(mcfg.num_layers)
      ]
    )
    self.up = _zeros_linear(mcfg.d_model, cfg.d_model, rngs)

  def init_state(self, batch: int) -> tuple[MambaCache, ...]:
    c = self.config
    zeros = lambda *shape: jnp.zeros(shape, jnp.float32)
    return tuple(
      MambaCache(
        conv=zeros(batch, c.d_inner, c.d_conv - 1),
        ssm=zeros(batch, c.d_inner, c.d_state),
      )
      for _ in self.blocks
    )

  def __call__(self, h, state, valid):
    x = self.down(self.norm(h))
    new = []
    for block, cache in zip(self.blocks, state):
      x, cache = block(x, cache, valid)
      new.append(cache)
    return h + self.up(x), tuple(new)


class ExitClassifiers(nnx.Module):
  """E exit classifiers of one kind, plus the consistency scores."""

  def __init__(self, cfg: ExitClassifierConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.score_heads = nnx.List(
      [nnx.Linear(cfg.d_model, 1, rngs=rngs) for _ in range(cfg.num_exits)]
    )
    make = {"lm_head": None, "mlp": _MLPExit, "mamba": _MambaExit}[cfg.kind]
    self.exits = nnx.List(
      [] if make is None else [make(cfg, rngs) for _ in range(cfg.num_exits)]
    )

  def _check(self, num_exits: int) -> None:
    if num_exits != self.config.num_exits:
      raise ValueError(
        f"the decode config has {num_exits} exits but these classifiers "
        f"were built for num_exits={self.config.num_exits}"
      )

  def init_state(
    self, num_exits: int, batch: int, max_len: int
  ) -> tuple[PyTree, ...]:
    self._check(num_exits)
    if self.config.kind != "mamba":
      return ((),) * num_exits
    return tuple(m.init_state(batch) for m in self.exits)

  def hidden(
    self,
    e: int,
    h: Float[Array, "B T D"],
    state: PyTree,
    valid: Bool[Array, "B T"],
  ) -> tuple[Float[Array, "B T D"], PyTree]:
    """Exit `e`'s refined hidden state (before the frozen norm + head)."""
    if self.config.kind == "lm_head":
      return h, state
    if self.config.kind == "mlp":
      return self.exits[e](h), state
    return self.exits[e](h, state, valid)

  def __call__(
    self,
    backbone,
    e: int,
    h: Float[Array, "B T D"],
    state: PyTree,
    positions: Int[Array, "B T"],
    valid: Bool[Array, "B T"],
  ) -> tuple[Float[Array, "B T V"], PyTree]:
    del positions
    x, state = self.hidden(e, h, state, valid)
    return backbone.lm_head(backbone.final_norm(x)), state

  def advance(
    self,
    backbone,
    e: int,
    h: Float[Array, "B T D"],
    state: PyTree,
    positions: Int[Array, "B T"],
    valid: Bool[Array, "B T"],
  ) -> PyTree:
    del backbone, positions
    if self.config.kind != "mamba":
      return state
    return self.hidden(e, h, state, valid)[1]

  def score(
    self, backbone, e: int, h: Float[Array, "B T D"]
  ) -> Float[Array, "B T"]:
    """Probability that exit `e` already agrees with the final layer."""
    del backbone
    z = self.score_heads[e](h.astype(jnp.float32))[..., 0]
    return jax.nn.sigmoid(z)
