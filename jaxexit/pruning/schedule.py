# Over 400 lines: 396 before ruff format; three schedules, one type.
"""Vision-token schedules over decoder depth: HiDrop, PyramidDrop, FastV.

A `VisionSchedule` says how many vision tokens are present in each decoder
layer of a multimodal LM (spec `hidrop_pallas.md` §2.3, §4, §5):

* HiDrop (Wu et al., ICLR 2026): text-only layers, late injection of all Nv
  projector outputs, a one-big-cut-then-tiny-tail "concave pyramid" of
  drops, early exit of the vision stream; persistent RoPE ids.
* PyramidDrop (Xing et al., CVPR 2025): S equal stages keeping ratio^s of the
  tokens; positions re-indexed after each drop.
* FastV (Chen et al., ECCV 2024): one drop after layer K scored with the
  attention of layer K - 1; persistent ids.

Every count is a Python int, so each stage has a static vision length and
the pruned forward compiles one block program per distinct length.
`prefill_flops_fraction` is the analytic prefill cost of a schedule relative
to the unpruned model (spec §2.3 table).

Layers are 0-indexed throughout (the papers' configs are 1-indexed: HiDrop's
`late_entry_layer 9` is layer 8 here, `layer_list [10, ...]` means a drop
after layer 9).

Axes: L layers, Nv vision tokens (`num_vision`), T text tokens.
"""

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

from jaxexit import checks
from jaxexit.cost import decoder_layer_flops, linear_flops
from jaxexit.models.llama import LlamaConfig

POSITION_MODES = ("persistent", "reindex")
SCORE_LAYERS = ("next", "current")


class Stage(NamedTuple):
  """A maximal run of layers `start .. stop - 1` with `count` vision tokens."""

  start: int
  stop: int
  count: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class VisionSchedule:
  """Vision tokens present in each decoder layer.

  Attributes:
    keep: [L] vision tokens present in layer l (0-indexed). Zeros before
      the injection layer (text only), then Nv (injection brings every
      vision token), then non-increasing counts, drops happening after
      the last layer of each stage; once 0 again the vision stream has
      exited for good.
    num_vision: Nv, vision tokens produced by the projector.
    name: a label for reports.
    position_mode: "persistent" (HiDrop, FastV: every token keeps the RoPE
      id it has in the unpruned sequence) or "reindex" (PyramidDrop:
      after each drop the surviving tokens are renumbered contiguously in
      sequence order).
    score_layer: which layer's attention ranks the vision tokens before a
      drop after layer l. "next": layer l + 1's input norm, q and k on the
      output of layer l (HiDrop and PyramidDrop: the attention the next
      layer would compute, recomputed for the query rows only). "current":
      layer l's own input norm, q and k on the input of layer l, i.e. the
      attention map layer l actually used (FastV re-runs layer K - 1 with
      `output_attentions=True` and drops before layer K).
  """

  keep: tuple[int, ...]
  num_vision: int
  name: str = "custom"
  position_mode: str = "persistent"
  score_layer: str = "next"

  def __post_init__(self):
    keep = tuple(self.keep)
    if not keep:
      raise ValueError(
        "VisionSchedule.keep must list one count per layer; got keep=()"
      )
    for i, count in enumerate(keep):
      checks.positive_int(f"VisionSchedule.keep[{i}]", count, minimum=0)
    object.__setattr__(self, "keep", tuple(int(c) for c in keep))
    checks.positive_int("VisionSchedule.num_vision", self.num_vision)
    checks.one_of(
      "VisionSchedule.position_mode", self.position_mode, POSITION_MODES
    )
    checks.one_of("VisionSchedule.score_layer", self.score_layer, SCORE_LAYERS)
    _check_counts(self.keep, self.num_vision)

  @property
  def num_layers(self) -> int:
    """L."""
    return len(self.keep)

  @property
  def inject_layer(self) -> int:
    """First layer with vision tokens (0: no late injection)."""
    return next(i for i, c in enumerate(self.keep) if c)

  @property
  def exit_layer(self) -> int:
    """First layer after the injection without vision tokens (L if none)."""
    return next(
      (
        i for i in range(self.inject_layer, self.num_layers) if not self.keep[i]
      ),
      self.num_layers,
    )

  @property
  def stages(self) -> tuple[Stage, ...]:
    """Maximal runs of equal counts covering all L layers, in order."""
    out, start = [], 0
    for i in range(1, self.num_layers + 1):
      if i == self.num_layers or self.keep[i] != self.keep[start]:
        out.append(Stage(start, i, self.keep[start]))
        start = i
    return tuple(out)

  @property
  def drop_layers(self) -> tuple[int, ...]:
    """Layers after which vision tokens are scored and dropped (the
    count shrinks but stays positive; the exit is not a drop)."""
    return tuple(
      s.stop - 1
      for s in self.stages
      if s.stop < self.num_layers and 0 < self.keep[s.stop] < s.count
    )

  @property
  def avg_vision_tokens(self) -> float:
    """Mean vision tokens over all L layers: the papers' "Tok" number."""
    return sum(self.keep) / self.num_layers

  def check_layers(self, num_layers: int) -> None:
    """Raises unless the schedule has one count per layer of the model."""
    if num_layers != self.num_layers:
      raise ValueError(
        f"schedule {self.name!r} has len(keep)="
        f"{self.num_layers} counts but the model has "
        f"num_layers={num_layers}"
      )


def _check_counts(keep: tuple[int, ...], num_vision: int) -> None:
  """Raises unless `keep` is 0*, Nv, non-increasing positive, 0*."""
  for i, count in enumerate(keep):
    if count > num_vision:
      raise ValueError(
        f"VisionSchedule.keep[{i}]={count} exceeds the "
        f"num_vision={num_vision} vision tokens"
      )
  if not any(keep):
    raise ValueError(
      "VisionSchedule.keep must hold a non-zero count (the "
      f"layer where vision is injected); got keep={keep}"
    )
  inject = next(i for i, c in enumerate(keep) if c)
  if keep[inject] != num_vision:
    raise ValueError(
      f"VisionSchedule.keep[{inject}]={keep[inject]}: the "
      "injection layer must bring all num_vision="
      f"{num_vision} tokens"
    )
  for i in range(inject + 1, len(keep)):
    if keep[i] > keep[i - 1]:
      raise ValueError(
        f"VisionSchedule.keep[{i}]={keep[i]} exceeds the keep[{i - 1}]="
        f"{keep[i - 1]} vision tokens available after layer {i - 1}: "
        "counts must not increase after the injection layer "
        f"{inject} (got keep={keep})"
      )


def _round(x: float) -> int:
  """Round half up (Python's `round` rounds half to even)."""
  return math.floor(x + 0.5)


def hidrop_from_stages(
  num_layers: int,
  num_vision: int,
  inject_layer: int,
  exit_layer: int,
  drop_after: Sequence[int],
  keep_counts: Sequence[int],
  *,
  name: str = "hidrop",
) -> VisionSchedule:
  """A HiDrop schedule from its config knobs (0-indexed layers).

  Layers `< inject_layer` are text only; layers `inject_layer ..
  drop_after[0]` hold all Nv tokens; layers `drop_after[s] + 1 ..
  drop_after[s + 1]` hold `keep_counts[s]`; the last count lasts until
  `exit_layer - 1`; layers `>= exit_layer` are text only again. The released
  Tok64 config (1-indexed `late_entry_layer 9, early_exit_layer 25,
  layer_list [10,14,16,18]`) is `inject_layer=8, exit_layer=24,
  drop_after=(9, 13, 15, 17), keep_counts=(215, 10, 5, 1)`.

  Args:
    num_layers: L.
    num_vision: Nv.
    inject_layer: first layer with vision, in [0, L - 1].
    exit_layer: first layer without vision again, in
      [inject_layer + 1, L] (L: no early exit).
    drop_after: strictly increasing layers in
      [inject_layer, exit_layer - 2] after which tokens are dropped.
    keep_counts: tokens kept by each drop (non-increasing, ≤ Nv).
    name: the schedule's label.

  Raises:
    ValueError: for out-of-range or unordered layers, mismatched lengths,
      or counts that `VisionSchedule` rejects.
  """
  checks.positive_int("num_layers", num_layers)
  checks.positive_int("inject_layer", inject_layer, minimum=0)
  checks.positive_int("exit_layer", exit_layer, minimum=0)
  if inject_layer >= num_layers:
    raise ValueError(
      f"inject_layer={inject_layer} must be < num_layers={num_layers}"
    )
  if not inject_layer < exit_layer <= num_layers:
    raise ValueError(
      f"exit_layer={exit_layer} must lie after inject_layer="
      f"{inject_layer} and be <= num_layers={num_layers}"
    )
  drop_after, keep_counts = tuple(drop_after), tuple(keep_counts)
  if len(drop_after) != len(keep_counts):
    raise ValueError(
      f"drop_after={drop_after} and keep_counts="
      f"{keep_counts} must have one entry per drop"
    )
  for i, layer in enumerate(drop_after):
    checks.positive_int(f"drop_after[{i}]", layer, minimum=0)
  bounds = (inject_layer - 1,) + drop_after + (exit_layer - 1,)
  for before, layer in zip(bounds[:-1], bounds[1:]):
    if layer <= before:
      raise ValueError(
        f"drop_after={drop_after} must increase strictly within "
        f"[inject_layer={inject_layer}, exit_layer - 2={exit_layer - 2}]"
      )
  keep = [0] * num_layers
  counts = (num_vision,) + keep_counts
  for first, last, count in zip(bounds[:-1], bounds[1:], counts):
    keep[first + 1 : last + 1] = [count] * (last - first)
  return VisionSchedule(keep=tuple(keep), num_vision=num_vision, name=name)


# name -> (stage starts, exit layer, counts after the Nv stage), all for the
# released 32-layer, 576-token LLaVA-1.5-7B configs (spec §2.3), 0-indexed.
HIDROP_RELEASED = {
  "tok48": ((8, 10, 14, 16, 18), 24, (87, 10, 5, 1)),
  "tok64": ((8, 10, 14, 16, 18), 24, (215, 10, 5, 1)),
  "tok80": ((8, 10, 13, 16, 19), 24, (453, 10, 5, 1)),
}
_REF_LAYERS, _REF_VISION = 32, 576


def hidrop_schedule(
  name: str, num_layers: int = _REF_LAYERS, num_vision: int = _REF_VISION
) -> VisionSchedule:
  """A released HiDrop schedule, scaled to another depth and token count.

  For L = 32 and Nv = 576 these are exactly the released Tok48 / Tok64 /
  Tok80 configs (mean 48.0 / 64.0 / 80.03 tokens per layer). Scaling rule:
  every stage boundary (injection layer, first layer of each stage, exit
  layer) b becomes round_half_up(b · L / 32), forced to leave at least
  one layer for the Nv stage; stages that end up empty vanish. Every count
  k after injection becomes max(1, round_half_up(k · Nv / 576)). Both maps
  are monotone, so the result is again a valid schedule.

  Args:
    name: "tok48", "tok64" or "tok80".
    num_layers: L.
    num_vision: Nv.
  """
  checks.one_of("name", name, tuple(HIDROP_RELEASED))
  checks.positive_int("num_layers", num_layers)
  checks.positive_int("num_vision", num_vision)
  starts, exit_layer, counts = HIDROP_RELEASED[name]
  scale = num_layers / _REF_LAYERS
  bounds = [_round(b * scale) for b in starts + (exit_layer,)]
  bounds[1] = max(bounds[1], bounds[0] + 1)
  for i in range(2, len(bounds)):
    bounds[i] = min(max(bounds[i], bounds[i - 1]), num_layers)
  counts = [max(1, _round(c * num_vision / _REF_VISION)) for c in counts]
  drop_after, keep_counts = [], []
  for start, stop, count in zip(bounds[1:-1], bounds[2:], counts):
    if stop > start:  # Stages squeezed to zero layers vanish.
      drop_after.append(start - 1)
      keep_counts.append(count)
  return hidrop_from_stages(
    num_layers,
    num_vision,
    bounds[0],
    bounds[-1],
    drop_after,
    keep_counts,
    name=f"hidrop_{name}",
  )


def pyramiddrop_schedule(
  num_layers: int, num_vision: int, num_stages: int = 4, ratio: float = 0.5
) -> VisionSchedule:
  """PyramidDrop: S equal stages, stage s keeps ratio^s of the tokens.

  Stage s starts at layer round_half_up(s · L / S) (drops after layers 7,
  15, 23 for L = 32, S = 4: the paper's 1-indexed `layer_list [8,16,24]`)
  and keeps max(1, round_half_up(Nv · ratio^s)) tokens (576 → 288 → 144
  → 72). Positions are re-indexed after each drop.

  Args:
    num_layers: L.
    num_vision: Nv.
    num_stages: S ≥ 1.
    ratio: λ in (0, 1].
  """
  checks.positive_int("num_layers", num_layers)
  checks.positive_int("num_vision", num_vision)
  checks.positive_int("num_stages", num_stages)
  checks.in_range("ratio", ratio, 0.0, 1.0, low_open=True)
  keep = []
  for s in range(num_stages):
    stop = max(1, _round((s + 1) * num_layers / num_stages))
    count = max(1, _round(num_vision * ratio**s))
    keep += [count] * (stop - len(keep))
  return VisionSchedule(
    keep=tuple(keep),
    num_vision=num_vision,
    name=f"pyramiddrop_s{num_stages}_r{ratio:g}",
    position_mode="reindex",
  )


def fastv_schedule(
  num_layers: int, num_vision: int, k: int = 2, keep_ratio: float = 0.5
) -> VisionSchedule:
  """FastV: all tokens in layers 0 .. K - 1, then max(1,
  round_half_up(Nv · keep_ratio)) from layer K on, ranked by layer K - 1's
  attention (`score_layer="current"`); persistent ids.

  Args:
    num_layers: L.
    num_vision: Nv.
    k: K in [1, L - 1] (paper default 2; the KV-cache script uses 3).
    keep_ratio: 1 - R in (0, 1].
  """
  checks.positive_int("num_layers", num_layers)
  checks.positive_int("num_vision", num_vision)
  checks.positive_int("k", k)
  if k >= num_layers:
    raise ValueError(f"k={k} must be < num_layers={num_layers}")
  checks.in_range("keep_ratio", keep_ratio, 0.0, 1.0, low_open=True)
  count = max(1, _round(num_vision * keep_ratio))
  return VisionSchedule(
    keep=(num_vision,) * k + (count,) * (num_layers - k),
    num_vision=num_vision,
    name=f"fastv_k{k}_r{keep_ratio:g}",
    score_layer="current",
  )


def full_schedule(num_layers: int, num_vision: int) -> VisionSchedule:
  """Every vision token in every layer (the unpruned model)."""
  checks.positive_int("num_layers", num_layers)
  return VisionSchedule(
    keep=(num_vision,) * num_layers, num_vision=num_vision, name="full"
  )


ScheduleFactory = Callable[[int, int], VisionSchedule]

# method -> schedule name -> factory(num_layers, num_vision), for CLIs.
SCHEDULES: dict[str, dict[str, ScheduleFactory]] = {
  "full": {"full": full_schedule},
  "hidrop": {
    n: (lambda L, nv, n=n: hidrop_schedule(n, L, nv)) for n in HIDROP_RELEASED
  },
  "pyramiddrop": {"s4_r0.5": pyramiddrop_schedule},
  "fastv": {
    "k2_r0.5": fastv_schedule,
    "k3_r0.5": lambda L, nv: fastv_schedule(L, nv, k=3),
  },
}


def make_schedule(
  method: str, schedule_name: str, num_layers: int, num_vision: int
) -> VisionSchedule:
  """Looks up `SCHEDULES[method][schedule_name](num_layers, num_vision)`."""
  checks.one_of("method", method, tuple(SCHEDULES))
  checks.one_of("schedule_name", schedule_name, tuple(SCHEDULES[method]))
  return SCHEDULES[method][schedule_name](num_layers, num_vision)


def _layer_flops(cfg: LlamaConfig, n: int) -> int:
  return decoder_layer_flops(
    n,
    cfg.d_model,
    cfg.num_heads,
    cfg.num_kv_heads,
    cfg.mlp_hidden,
    head_dim=cfg.head_dim,
  )


def _score_flops(cfg: LlamaConfig, n: int, num_queries: int) -> int:
  """q for the query rows, k for all n tokens, q·kᵀ over n keys."""
  q_width = cfg.num_heads * cfg.head_dim
  return (
    linear_flops(cfg.d_model, q_width, num_queries)
    + linear_flops(cfg.d_model, cfg.num_kv_heads * cfg.head_dim, n)
    + 2 * num_queries * n * q_width
  )


def prefill_flops_fraction(
  schedule: VisionSchedule,
  text_len: int,
  cfg: LlamaConfig,
  *,
  num_queries: int = 1,
) -> float:
  """Analytic prefill FLOPs of the pruned decoder over the unpruned one's.

  Convention of `jaxexit.cost.decoder_layer_flops` (2 FLOPs per
  multiply-add; GQA projections, dense n × n attention scores and weighted
  sums, the 3-matrix SwiGLU MLP; norms, softmax, embeddings and the LM head
  ignored): layer l costs `decoder_layer_flops(n_l)` with n_l = T +
  keep[l]; each drop adds the scoring rows (q of the `num_queries` query
  rows, k of all n tokens, the q·kᵀ logits). The unpruned model is L layers
  at n = T + Nv. (The spec's `4nd² + 2n²d + 2ndm` counts multiply-adds
  with a 2-matrix MLP; its ratios differ by a few points.)

  Args:
    schedule: the vision schedule (its L must equal `cfg.num_layers`).
    text_len: T ≥ 1 text tokens.
    cfg: the decoder's sizes.
    num_queries: query rows of the importance scores (1 at inference).

  Returns:
    pruned FLOPs / unpruned FLOPs.
  """
  schedule.check_layers(cfg.num_layers)
  checks.positive_int("text_len", text_len)
  checks.positive_int("num_queries", num_queries)
  pruned = sum(_layer_flops(cfg, text_len + c) for c in schedule.keep)
  pruned += sum(
    _score_flops(cfg, text_len + schedule.keep[l], num_queries)
    for l in schedule.drop_layers
  )
  full = cfg.num_layers * _layer_flops(cfg, text_len + schedule.num_vision)
  return pruned / full
