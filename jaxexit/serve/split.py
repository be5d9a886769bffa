"""CE-CoLLM split inference: edge blocks + exit head, exact cloud catch-up.

Jin & Wu, arXiv 2411.02829 (spec `llm_exits.md` §4; the protocol is the
spec's reconstruction §4.2, unverified). A `DecoderBackbone` of L blocks is
split at layer k, 1 ≤ k ≤ L - 1:

* the **edge** runs the embeddings and blocks 0..k-1 with its own caches,
  yields hidden-state index k (the residual stream after block k-1,
  `[B, T, D]`) and the exit head's logits there: the backbone's own final
  norm + LM head (`LMHeadExits`, CALM's shared head) or a trained head
  (`jaxexit.methods.dynamax.ExitClassifiers` with one exit);
* the **cloud** holds the caches of blocks k..L-1. `catch_up` takes the
  layer-k states of every position it has not run yet (those the edge
  answered itself included), runs blocks k..L-1 over them, writes its
  caches and returns the logits of the last valid position: EE-LLM's
  deferred recomputation (spec §1.1), exact because the backbone contract
  makes invalid positions no-ops and a call may cover several positions.

Static shapes: a catch-up of n positions is padded to the smallest bucket
≥ n (positions invalid), and split into chunks of the largest bucket when
n exceeds it, so the cloud compiles one program per bucket. The caches are
donated, so accelerators update them in place.

The hidden states travel in `jaxexit.serve.wire`'s format.

Axes: B batch, T tokens (a catch-up chunk), D width, V vocabulary, L blocks.
"""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import ArrayLike

from jaxexit import checks
from jaxexit.decoding.backbone import DecoderBackbone
from jaxexit.decoding.exit_heads import DecoderExitHeads, LMHeadExits
from jaxexit.typing import Array, Bool, Float, Int, PyTree

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def check_split(num_layers: int, k: int) -> None:
  """Raises ValueError unless 1 ≤ k ≤ L - 1 (both sides keep a block)."""
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
    raise ValueError(f"split layer k must be an int; got k={k!r}")
  if not 1 <= k <= num_layers - 1:
    raise ValueError(
      f"split layer k={k} must lie in [1, L-1] = [1, {num_layers - 1}] "
      f"for a backbone of L={num_layers} blocks"
    )


class EdgeState(NamedTuple):
  """What the edge carries between calls.

  Attributes:
    caches: k caches, blocks 0..k-1 (the backbone's cache layout).
    head: the exit head's state (`()` for stateless heads).
  """

  caches: tuple[PyTree, ...]
  head: PyTree


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class EdgeOutput:
  """Edge forward pass.

  Attributes:
    hidden: [B, T, D] hidden-state index k (what is uploaded).
    logits: [B, V] float32 exit logits of each row's last valid position.
    state: the updated `EdgeState`.
  """

  hidden: PyTree
  logits: PyTree
  state: PyTree


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CloudOutput:
  """Cloud catch-up.

  Attributes:
    logits: [B, V] float32 final logits of each row's last valid position
      (garbage for a row with no valid position).
    caches: the L - k updated caches of blocks k..L-1.
  """

  logits: PyTree
  caches: PyTree


def last_valid_index(valid: Bool[Array, "B T"]) -> Int[Array, "B"]:
  """Index of each row's last valid position (0 for an all-invalid row)."""
  t = jnp.arange(valid.shape[1], dtype=jnp.int32)[None]  # [1, T]
  return jnp.max(jnp.where(valid, t, 0), axis=1)


def _take(x: Array, index: Array) -> Array:
  """x [B, T, ...] at index [B] along T, keeping T: [B, 1, ...]."""
  index = index.reshape((-1, 1) + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, index, axis=1)


def edge_init(
  backbone: DecoderBackbone,
  heads: DecoderExitHeads,
  k: int,
  batch: int,
  max_len: int,
) -> EdgeState:
  """Empty caches of blocks 0..k-1 and the head's (single exit) state."""
  check_split(backbone.num_layers, k)
  caches = backbone.init_cache(batch, max_len)[:k]
  return EdgeState(caches, heads.init_state(1, batch, max_len)[0])


def cloud_init(
  backbone: DecoderBackbone, k: int, batch: int, max_len: int
) -> tuple[PyTree, ...]:
  """Empty caches of blocks k..L-1."""
  check_split(backbone.num_layers, k)
  return tuple(backbone.init_cache(batch, max_len)[k:])


def edge_forward(
  backbone: DecoderBackbone,
  heads: DecoderExitHeads,
  k: int,
  tokens: Int[Array, "B T"],
  state: EdgeState,
  positions: Int[Array, "B T"],
  valid: Bool[Array, "B T"],
) -> EdgeOutput:
  """Embeddings, blocks 0..k-1 and exit 0 of `heads` on `tokens`.

  A stateless `LMHeadExits` runs on each row's last valid position only;
  other heads run on all T (a recurrent head must absorb every step).
  """
  check_split(backbone.num_layers, k)
  h = backbone.embed(tokens)
  caches = list(state.caches)
  for i in range(k):
    h, caches[i] = backbone.layer(i, h, caches[i], positions, valid)
  last = last_valid_index(valid)
  if isinstance(heads, LMHeadExits):
    logits, head = heads(
      backbone,
      0,
      _take(h, last),
      state.head,
      _take(positions, last),
      _take(valid, last),
    )  # [B, 1, V]
  else:
    logits, head = heads(backbone, 0, h, state.head, positions, valid)
    logits = _take(logits, last)  # [B, 1, V]
  return EdgeOutput(h, logits[:, 0], EdgeState(tuple(caches), head))


def cloud_forward(
  backbone: DecoderBackbone,
  k: int,
  hidden: Float[Array, "B T D"],
  caches: tuple[PyTree, ...],
  positions: Int[Array, "B T"],
  valid: Bool[Array, "B T"],
) -> CloudOutput:
  """Blocks k..L-1 over uploaded layer-k states, then the final norm and
  LM head on each row's last valid position."""
  num_layers = backbone.num_layers
  check_split(num_layers, k)
  if len(caches) != num_layers - k:
    raise ValueError(
      f"the cloud needs L-k = {num_layers - k} caches (blocks {k}.."
      f"{num_layers - 1}); got {len(caches)}"
    )
  h, caches = hidden, list(caches)
  for i in range(k, num_layers):
    h, caches[i - k] = backbone.layer(i, h, caches[i - k], positions, valid)
  last = _take(h, last_valid_index(valid))  # [B, 1, D]
  logits = backbone.lm_head(backbone.final_norm(last))[:, 0]  # [B, V]
  return CloudOutput(logits, tuple(caches))


@functools.partial(
  jax.jit, static_argnames=("graphdef", "k"), donate_argnames=("state",)
)
def _edge_jit(graphdef, params, state, tokens, positions, valid, *, k):
  backbone, heads = nnx.merge(graphdef, params)
  return edge_forward(backbone, heads, k, tokens, state, positions, valid)


@functools.partial(
  jax.jit, static_argnames=("graphdef", "k"), donate_argnames=("caches",)
)
def _cloud_jit(graphdef, params, caches, hidden, positions, valid, *, k):
  backbone = nnx.merge(graphdef, params)
  return cloud_forward(backbone, k, hidden, caches, positions, valid)


def _own(tree: PyTree) -> PyTree:
  """Fresh buffers per leaf: donation refuses a buffer passed twice (a
  backbone may return one empty cache object for every block)."""
  return jax.tree.map(jnp.copy, tree)


def _rows(name, x, batch, max_len, positions, valid):
  """Host checks shared by both sides; returns (positions, valid) as jnp."""
  if np.ndim(x) < 2 or np.shape(x)[0] != batch or np.shape(x)[1] < 1:
    raise ValueError(
      f"{name}.shape={np.shape(x)} must start with [B={batch}, T >= 1]"
    )
  t = np.shape(x)[:2]
  valid = np.ones(t, bool) if valid is None else np.asarray(valid)
  positions = np.asarray(positions)
  if positions.shape != t or valid.shape != t:
    raise ValueError(
      f"positions.shape={positions.shape} and valid.shape={valid.shape} "
      f"must be {name}.shape[:2]={t}"
    )
  if valid.dtype != bool or not np.issubdtype(positions.dtype, np.integer):
    raise ValueError(
      f"valid must be bool and positions integer; got {valid.dtype}, "
      f"{positions.dtype}"
    )
  bad = valid & ((positions < 0) | (positions >= max_len))
  if bad.any():
    raise ValueError(
      f"valid positions must lie in [0, max_len={max_len}); got "
      f"{positions[bad].tolist()}"
    )
  return jnp.asarray(positions, jnp.int32), jnp.asarray(valid)


class EdgeModel:
  """The edge: blocks 0..k-1 and an exit head, with its own caches.

  Args:
    backbone: the full `DecoderBackbone` (only blocks < k, the embeddings
      and what the head uses are ever run).
    k: split layer, 1 ≤ k ≤ L - 1.
    batch: B.
    max_len: cache positions.
    heads: the exit head, exit 0 of a `DecoderExitHeads` (e.g. DYNAMAX
      `ExitClassifiers` built with `num_exits=1` and trained on layer k's
      states); None means `LMHeadExits()`, the backbone's own final norm
      + LM head.
  """

  def __init__(
    self,
    backbone,
    k: int,
    *,
    batch: int,
    max_len: int,
    heads: DecoderExitHeads | None = None,
  ):
    heads = LMHeadExits() if heads is None else heads
    checks.positive_int("batch", batch)
    checks.positive_int("max_len", max_len)
    self.k, self.batch, self.max_len = k, batch, max_len
    self.vocab_size = backbone.vocab_size
    # Kept apart from `state`, whose buffers every call donates.
    self._init = _own(edge_init(backbone, heads, k, batch, max_len))
    self.state = _own(self._init)
    self._graphdef, self._params = nnx.split((backbone, heads))

  def reset(self) -> None:
    """Forgets every position (fresh caches and head state)."""
    self.state = _own(self._init)

  def __call__(
    self,
    tokens: Int[ArrayLike, "B T"],
    positions: Int[ArrayLike, "B T"],
    valid: Bool[ArrayLike, "B T"] | None = None,
  ) -> EdgeOutput:
    """Runs `tokens` at `positions` (valid ones written to the caches).

    Returns:
      `EdgeOutput`: hidden [B, T, D] to upload, exit logits [B, V].
    """
    tokens = np.asarray(tokens)
    checks.token_ids("tokens", tokens, self.vocab_size)
    positions, valid = _rows(
      "tokens", tokens, self.batch, self.max_len, positions, valid
    )
    out = _edge_jit(
      self._graphdef,
      self._params,
      self.state,
      jnp.asarray(tokens, jnp.int32),
      positions,
      valid,
      k=self.k,
    )
    self.state = out.state
    return out


class CloudModel:
  """The cloud: caches of blocks k..L-1 and a bucketed, exact catch-up.

  Args:
    backbone: the full `DecoderBackbone` (blocks ≥ k, final norm and LM
      head are run).
    k: split layer, 1 ≤ k ≤ L - 1.
    batch: B.
    max_len: cache positions.
    buckets: chunk lengths compiled, increasing; the largest is the
      maximum chunk of one compiled call.
  """

  def __init__(
    self,
    backbone,
    k: int,
    *,
    batch: int,
    max_len: int,
    buckets: tuple[int, ...] = DEFAULT_BUCKETS,
  ):
    checks.positive_int("batch", batch)
    checks.positive_int("max_len", max_len)
    buckets = tuple(buckets)
    for b in buckets:
      checks.positive_int("bucket", b)
    if not buckets or list(buckets) != sorted(set(buckets)):
      raise ValueError(f"buckets={buckets} must be non-empty, increasing")
    self.k, self.batch, self.max_len = k, batch, max_len
    self.buckets, self.d_model = buckets, backbone.d_model
    self._init = _own(cloud_init(backbone, k, batch, max_len))
    self.caches = _own(self._init)
    self._graphdef, self._params = nnx.split(backbone)
    self._logits_shape = (batch, backbone.vocab_size)

  def reset(self) -> None:
    """Forgets every position (fresh caches)."""
    self.caches = _own(self._init)

  def bucket(self, n: int) -> int:
    """The compiled chunk length for n pending positions (n ≤ max)."""
    return next((b for b in self.buckets if b >= n), self.buckets[-1])

  def catch_up(
    self,
    hidden: Float[ArrayLike, "B T D"],
    positions: Int[ArrayLike, "B T"],
    valid: Bool[ArrayLike, "B T"] | None = None,
  ) -> Float[Array, "B V"]:
    """Runs blocks k..L-1 over the pending layer-k states.

    Args:
      hidden: [B, T, D] layer-k states of positions the cloud has not run,
        in order (a Mamba cloud needs them after everything it absorbed).
      positions: [B, T] their absolute positions.
      valid: [B, T] bool, False where a row has nothing (None: all valid).

    Returns:
      [B, V] float32 logits of each row's last valid position (zeros for a
      row with none).
    """
    hidden = np.asarray(hidden)
    if hidden.ndim != 3 or hidden.shape[2] != self.d_model:
      raise ValueError(
        f"hidden.shape={hidden.shape} must be [B, T, D={self.d_model}]"
      )
    positions, valid = _rows(
      "hidden", hidden, self.batch, self.max_len, positions, valid
    )
    hidden = jnp.asarray(hidden)
    logits = jnp.zeros(self._logits_shape, jnp.float32)
    chunk = self.buckets[-1]
    for start in range(0, hidden.shape[1], chunk):
      sl = slice(start, start + chunk)
      h, p, v = hidden[:, sl], positions[:, sl], valid[:, sl]
      pad = self.bucket(h.shape[1]) - h.shape[1]
      if pad:
        h = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
        p = jnp.pad(p, ((0, 0), (0, pad)))
        v = jnp.pad(v, ((0, 0), (0, pad)))
      out = _cloud_jit(
        self._graphdef, self._params, self.caches, h, p, v, k=self.k
      )
      self.caches = out.caches
      logits = jnp.where(v.any(axis=1)[:, None], out.logits, logits)
    return logits
