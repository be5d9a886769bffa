"""Cost accounting for early exits: analytic FLOPs and speed-ups.

The early-exit papers report cost in incompatible ways (notes:
encoder_exits.md §1.2), so every metric here says exactly what it is:

  avg_layers           mean over examples of (exit_layer + 1): layers run,
                       with 0-based exit indices (PALBERT "Avg. Inference
                       Layers").
  theoretical_speedup  L / avg_layers (PALBERT "Speed Up", PABEE's "1.57x").
  saved_fraction       1 - avg_layers / L (what PABEE's code prints as
                       "Speed Up"; DeeBERT's "expected saving" is the
                       complement, avg_layers / L).
  expected_flops       mean over examples of the cumulative cost of the exit
                       taken, exit heads included (JEI-DNN, Dyn-Perceiver).
  flops_fraction       expected_flops / full-model FLOPs (JEI-DNN's
                       relative Mul-Add axis).
  realised_speedup     measured full-model seconds / measured seconds.

FLOPs convention: one multiply-add counts as 2 FLOPs (so FLOPs = 2 × MACs, and
a [M, K] @ [K, N] product costs 2·M·K·N). Counted: every matrix product
(projections, attention scores and weighted sums, MLPs). Ignored, as in
Dyn-Perceiver's analytic counter: biases, norms, softmax, activations,
residual adds, embeddings. Counts are per example (one sequence of `seq_len`
tokens).

The accounting functions run on the host with numpy in float64, on concrete
values (call them after `jax.device_get`); they are not for use under `jit`.

Axes: `B` examples (any leading shape: `[B]` or `[B, T]` for token-level
exits), `L` layers / exits.
"""

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np
from jaxtyping import ArrayLike, Float, Int, Real

from jaxexit import checks
from jaxexit.timing import Timing

ExitLayers = Int[ArrayLike, "*B"] | Sequence[int]
PerLayer = Real[ArrayLike, "L"] | Sequence[int | float]


# ----------------------------------------------------------------------------
# Analytic FLOPs per layer kind.
# ----------------------------------------------------------------------------


def linear_flops(in_features: int, out_features: int, tokens: int = 1) -> int:
  """FLOPs of a dense layer, `[tokens, in] @ [in, out]` (bias ignored).

  Args:
    in_features: input width.
    out_features: output width.
    tokens: rows the layer is applied to.

  Returns:
    2 · tokens · in_features · out_features.
  """
  checks.positive_int("in_features", in_features)
  checks.positive_int("out_features", out_features)
  checks.positive_int("tokens", tokens)
  return 2 * tokens * in_features * out_features


def encoder_layer_flops(
  seq_len: int, d_model: int, num_heads: int, d_ff: int
) -> int:
  """FLOPs of one BERT/ALBERT/ViT encoder layer on one sequence.

  With T = seq_len, D = d_model, F = d_ff:
    Q, K, V and output projections   4 · 2TD²
    scores QKᵀ and weighted sum AV   2 · 2T²D   (H heads of width D/H)
    MLP D → F → D                    2 · 2TDF
  The head count changes no FLOP; it is checked to divide D.

  Args:
    seq_len: T, tokens attended over (bidirectional, all T × T pairs).
    d_model: D.
    num_heads: H, must divide D.
    d_ff: F, MLP hidden width.

  Returns:
    8TD² + 4T²D + 4TDF.
  """
  _check_heads(d_model, num_heads)
  checks.positive_int("seq_len", seq_len)
  checks.positive_int("d_ff", d_ff)
  projections = 4 * linear_flops(d_model, d_model, seq_len)
  attention = 2 * (2 * seq_len * seq_len * d_model)
  mlp = linear_flops(d_model, d_ff, seq_len) + linear_flops(
    d_ff, d_model, seq_len
  )
  return projections + attention + mlp


def decoder_layer_flops(
  seq_len: int,
  d_model: int,
  num_heads: int,
  num_kv_heads: int,
  d_ff: int,
  *,
  kv_len: int | None = None,
  head_dim: int | None = None,
) -> int:
  """FLOPs of one Llama-style decoder layer (GQA, SwiGLU) on one sequence.

  With T = seq_len new tokens, S = kv_len attended positions, H query heads,
  G = num_kv_heads, K = head_dim:
    Q and output projections         2 · 2TD·HK
    K and V projections (new tokens) 2 · 2TD·GK
    scores and weighted sum          2 · 2TS·HK
    gated MLP (gate, up, down)       3 · 2TDF
  Prefill is `seq_len=kv_len=T` and counts all T × T pairs (what a dense
  masked kernel computes; a causal kernel that skips masked blocks does about
  half). One decode step with a cache is `seq_len=1, kv_len=` cached
  positions including the new one.

  Args:
    seq_len: T, new tokens processed.
    d_model: D.
    num_heads: H.
    num_kv_heads: G, must divide H (G = H is plain multi-head attention).
    d_ff: F, hidden width of the SwiGLU MLP.
    kv_len: S, key/value positions each query attends to; defaults to T.
    head_dim: K; defaults to D / H (then H must divide D).

  Returns:
    The layer's FLOPs.
  """
  for name, value in (
    ("seq_len", seq_len),
    ("d_model", d_model),
    ("num_heads", num_heads),
    ("num_kv_heads", num_kv_heads),
    ("d_ff", d_ff),
  ):
    checks.positive_int(name, value)
  if head_dim is None:
    _check_heads(d_model, num_heads)
    head_dim = d_model // num_heads
  checks.positive_int("head_dim", head_dim)
  if num_heads % num_kv_heads:
    raise ValueError(
      f"num_kv_heads must divide num_heads; got "
      f"num_heads={num_heads}, num_kv_heads={num_kv_heads}"
    )
  kv_len = seq_len if kv_len is None else kv_len
  checks.positive_int("kv_len", kv_len)
  q_width, kv_width = num_heads * head_dim, num_kv_heads * head_dim
  projections = (
    linear_flops(d_model, q_width, seq_len)
    + 2 * linear_flops(d_model, kv_width, seq_len)
    + linear_flops(q_width, d_model, seq_len)
  )
  attention = 2 * (2 * seq_len * kv_len * q_width)
  mlp = 2 * linear_flops(d_model, d_ff, seq_len) + linear_flops(
    d_ff, d_model, seq_len
  )
  return projections + attention + mlp


def _check_heads(d_model: int, num_heads: int) -> None:
  checks.positive_int("d_model", d_model)
  checks.positive_int("num_heads", num_heads)
  if d_model % num_heads:
    raise ValueError(
      f"num_heads must divide d_model; got d_model={d_model}, "
      f"num_heads={num_heads}"
    )


# ----------------------------------------------------------------------------
# Per-exit cost and speed-up metrics.
# ----------------------------------------------------------------------------


def _per_layer(name: str, values: PerLayer) -> np.ndarray:
  arr = np.asarray(values, dtype=np.float64)
  if arr.ndim != 1 or arr.size == 0:
    raise ValueError(
      f"{name} must be a non-empty [L] vector; got shape {arr.shape}"
    )
  checks.in_range(name, arr, 0.0, np.inf)
  return arr


def _exit_layers(
  exit_layer: ExitLayers, num_layers: int | None = None
) -> np.ndarray:
  """Validated 0-based exit indices as an int64 array."""
  arr = np.asarray(exit_layer)
  if arr.size == 0:
    raise ValueError(
      f"exit_layer must hold at least one example; got shape {arr.shape}"
    )
  if not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"exit_layer must hold integers; got dtype={arr.dtype}")
  if num_layers is None:
    checks.in_range("exit_layer", arr, 0.0, np.inf)
  else:
    checks.positive_int("num_layers", num_layers)
    checks.in_range("exit_layer", arr, 0.0, float(num_layers - 1))
  return arr.astype(np.int64)


def cumulative_exit_flops(
  layer_flops: PerLayer, head_flops: PerLayer
) -> Float[np.ndarray, "L"]:
  """Cost of exiting at each layer, as JEI-DNN counts it.

  Exiting after layer l has run layers 0..l and evaluated every exit head
  (classifier and gate) 0..l, since each earlier head was evaluated and
  declined.

  Args:
    layer_flops: [L] FLOPs of each backbone layer.
    head_flops: [L] FLOPs of the exit head (plus gate) after each layer.

  Returns:
    [L] float64: cumsum(layer_flops) + cumsum(head_flops).
  """
  layers = _per_layer("layer_flops", layer_flops)
  heads = _per_layer("head_flops", head_flops)
  checks.same_shape(("layer_flops", "head_flops"), layers, heads)
  return np.cumsum(layers) + np.cumsum(heads)


def expected_flops(exit_layer: ExitLayers, cumulative: PerLayer) -> float:
  """Mean per-example cost: mean over examples of `cumulative[exit_layer]`.

  Args:
    exit_layer: [B] (any shape) 0-based exit layers, in [0, L - 1].
    cumulative: [L] cost of exiting at each layer
      (`cumulative_exit_flops`).

  Returns:
    The expected FLOPs per example.
  """
  cum = _per_layer("cumulative", cumulative)
  exits = _exit_layers(exit_layer, cum.shape[0])
  return float(np.mean(cum[exits]))


def avg_layers(exit_layer: ExitLayers) -> float:
  """Mean number of layers run: mean(exit_layer + 1).

  Args:
    exit_layer: [B] (any shape) 0-based exit layers, ≥ 0.

  Returns:
    Average layers computed per example (1-based count).
  """
  return float(np.mean(_exit_layers(exit_layer) + 1))


def theoretical_speedup(exit_layer: ExitLayers, num_layers: int) -> float:
  """L / avg_layers: speed-up if time were proportional to layers run.

  Args:
    exit_layer: [B] (any shape) 0-based exit layers, in [0, L - 1].
    num_layers: L, layers of the full model.

  Returns:
    A ratio ≥ 1 (1 when every example runs all L layers).
  """
  _exit_layers(exit_layer, num_layers)
  return num_layers / avg_layers(exit_layer)


def saved_fraction(exit_layer: ExitLayers, num_layers: int) -> float:
  """1 - avg_layers / L: fraction of layers skipped.

  Args:
    exit_layer: [B] (any shape) 0-based exit layers, in [0, L - 1].
    num_layers: L, layers of the full model.

  Returns:
    A fraction in [0, 1 - 1/L].
  """
  _exit_layers(exit_layer, num_layers)
  return 1.0 - avg_layers(exit_layer) / num_layers


def realised_speedup(
  full_seconds: int | float | Timing, mode_seconds: int | float | Timing
) -> float:
  """Measured speed-up: full-model time / early-exit time.

  Args:
    full_seconds: time of the full model (a `Timing` uses its median).
    mode_seconds: time of the early-exit mode (same unit).

  Returns:
    full_seconds / mode_seconds.
  """
  full = (
    full_seconds.median
    if isinstance(full_seconds, Timing)
    else float(full_seconds)
  )
  mode = (
    mode_seconds.median
    if isinstance(mode_seconds, Timing)
    else float(mode_seconds)
  )
  checks.in_range("full_seconds", full, 0.0, np.inf, low_open=True)
  checks.in_range("mode_seconds", mode, 0.0, np.inf, low_open=True)
  return full / mode


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CostReport:
  """The cost of one evaluation run, every metric of the papers at once.

  Attributes:
    num_layers: L (static pytree metadata).
    avg_layers: mean(exit_layer + 1).
    theoretical_speedup: L / avg_layers.
    saved_fraction: 1 - avg_layers / L.
    expected_flops: mean cumulative FLOPs of the exit taken, or None.
    full_flops: FLOPs of the full model used as denominator, or None.
    flops_fraction: expected_flops / full_flops, or None.
  """

  # Python floats from `cost_report`; annotated as ArrayLike because pytree
  # maps (stacking reports over seeds, `jit` outputs) rebuild it from arrays.
  num_layers: int = dataclasses.field(metadata=dict(static=True))
  avg_layers: ArrayLike
  theoretical_speedup: ArrayLike
  saved_fraction: ArrayLike
  expected_flops: ArrayLike | None = None
  full_flops: ArrayLike | None = None
  flops_fraction: ArrayLike | None = None

  def as_dict(self) -> dict[str, int | float | None]:
    """JSON-ready plain Python numbers."""
    out = {}
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      out[field.name] = (
        None
        if value is None
        else (int(value) if field.name == "num_layers" else float(value))
      )
    return out


def cost_report(
  exit_layer: ExitLayers,
  num_layers: int,
  cumulative_flops: PerLayer | None = None,
  *,
  full_flops: int | float | None = None,
) -> CostReport:
  """All cost metrics for one set of exit decisions.

  Args:
    exit_layer: [B] (any shape) 0-based exit layers, in [0, L - 1].
    num_layers: L.
    cumulative_flops: [L] cost of exiting at each layer
      (`cumulative_exit_flops`); None leaves the FLOP fields None.
    full_flops: denominator of `flops_fraction`; defaults to
      `cumulative_flops[-1]` (all layers and all heads). Pass the bare
      backbone's FLOPs to normalise as JEI-DNN does.

  Returns:
    A `CostReport`.
  """
  _exit_layers(exit_layer, num_layers)
  report = dict(
    num_layers=num_layers,
    avg_layers=avg_layers(exit_layer),
    theoretical_speedup=theoretical_speedup(exit_layer, num_layers),
    saved_fraction=saved_fraction(exit_layer, num_layers),
  )
  if cumulative_flops is not None:
    cum = _per_layer("cumulative_flops", cumulative_flops)
    if cum.shape[0] != num_layers:
      raise ValueError(
        f"cumulative_flops must have num_layers={num_layers} "
        f"entries; got shape {cum.shape}"
      )
    full = float(cum[-1]) if full_flops is None else float(full_flops)
    checks.in_range("full_flops", full, 0.0, np.inf, low_open=True)
    expected = expected_flops(exit_layer, cum)
    report.update(
      expected_flops=expected, full_flops=full, flops_fraction=expected / full
    )
  return CostReport(**report)
