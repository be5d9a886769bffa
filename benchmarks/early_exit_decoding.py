"""Realised vs theoretical speed-up of early-exit decoding at batch 1.

Spec: `llm_exits.md` §1.1–1.5. Two backbones decode greedily, one prompt at a
time (batch 1: every token exits on its own), with the shared LM head as the
exit classifier (`LMHeadExits`, CALM) and the max-softmax rule:

* transformer: SmolLM2-135M-Instruct (offline GGUF, 30 blocks, d=576,
  V=49152), exits after blocks (8, 15, 22), chat-templated TruthfulQA
  questions;
* mamba: a `MambaLM` of mamba-130m's sizes (24 blocks, d=768, V=50280) with
  *random* weights (no Mamba checkpoint is available offline), exits after
  (6, 12, 18), fed the same prompt ids.

For each state mode (`propagate`, `recompute`, `freeze`, and `oracle`, which
runs every block: the no-saving control) and each target depth (1/4, 1/2,
3/4 of the blocks) a threshold λ is searched (see `search_threshold`), then
the full model, a prefill-only run and every distinct (mode, λ) run are timed
side by side in one process (round-robin, medians after warm-up). EOS is
ignored so every run decodes exactly `max_new_tokens` tokens.

  python benchmarks/early_exit_decoding.py          # ~15 min, BENCHMARKS.md
  python benchmarks/early_exit_decoding.py --quick  # transformer, < 3 min

Writes `benchmarks/results/early_exit_decoding.json` (`--quick`:
`early_exit_decoding_quick.json`, and BENCHMARKS.md is left alone): records
`{"backbone", "state_mode", "batch", "avg_layers_fraction",
"theoretical_speedup", "realised_speedup", "ratio", "consistency",
"identical_to_full", "tokens_per_s", "full_tokens_per_s", ...}`, plus the
transformer's `state_mode="self_speculative"` records at
`SELF_SPECULATIVE_GRID` (`benchmarks/self_speculative_decoding.py`'s
`measure`, same prompts). Speed-ups are over decode steps (the prefill is
the same for every method):

* theoretical = 1 / flops_fraction: XLA-counted FLOPs per decode step, every
  exit head evaluated and the propagate / catch-up work included
  (`jaxexit.decoding.cost`);
* layer_speedup = L / avg_layers (ignores the exit heads);
* realised = (t_full − t_prefill) / (t_mode − t_prefill) on medians;
  realised_min the same on each candidate's fastest round; realised_e2e =
  t_full / t_mode (prefill included); ratio = realised / theoretical;
* exits_disabled_overhead = t(generate with exits disabled) / t_full − 1:
  the engine's own cost over `generate_full` (same tokens).
"""

import argparse
import dataclasses
import importlib.util
import functools
import os
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxexit import checks, report, timing
from jaxexit.data.gguf_tokenizer import GGUFTokenizer
from jaxexit.data.text import load_truthfulqa
from jaxexit.decoding.config import DecodeConfig
from jaxexit.decoding.cost import decode_costs
from jaxexit.decoding.engine import cache_length, generate
from jaxexit.decoding.exit_heads import LMHeadExits
from jaxexit.decoding.full import generate_full
from jaxexit.decoding.simulate import simulate_exits
from jaxexit.decoding.metrics import decode_metrics
from jaxexit.models.gguf_weights import load_smollm2, smollm2_gguf_path
from jaxexit.models.mamba import MAMBA_CONFIGS, MambaLM

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results" / "early_exit_decoding.json"
QUICK_RESULTS = HERE / "results" / "early_exit_decoding_quick.json"
BENCHMARKS_MD = HERE.parent / "BENCHMARKS.md"
MODES = ("propagate", "recompute", "freeze", "oracle")
TARGETS = (0.25, 0.5, 0.75)
BACKBONES = ("transformer", "mamba")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
  """How much one benchmark run does.

  Attributes:
    backbones: which of `BACKBONES` to run.
    modes: which state modes to time (`MODES` by default).
    num_prompts: TruthfulQA questions per backbone (same order), each
      decoded alone (batch 1).
    max_new_tokens: N tokens per prompt (the first comes from the prefill).
    warmup, repeats: untimed / timed round-robin rounds.
    search_steps: at most this many engine runs per threshold search.
    tolerance: a search stops once |avg layers − target| ≤ tolerance · L.
  """

  backbones: tuple[str, ...] = BACKBONES
  modes: tuple[str, ...] = MODES
  num_prompts: tuple[int, ...] = (2, 1)
  max_new_tokens: int = 32
  warmup: int = 1
  repeats: int = 5
  search_steps: int = 6
  tolerance: float = 0.02

  def __post_init__(self):
    for name in self.backbones:
      checks.one_of("backbones", name, BACKBONES)
    for mode in self.modes:
      checks.one_of("modes", mode, MODES)
    if len(self.num_prompts) != len(self.backbones):
      raise ValueError(
        f"num_prompts={self.num_prompts} needs one count per "
        f"backbone of backbones={self.backbones}"
      )
    for count in self.num_prompts:
      checks.positive_int("num_prompts", count)
    checks.positive_int("max_new_tokens", self.max_new_tokens, minimum=2)
    checks.positive_int("warmup", self.warmup, minimum=0)
    checks.positive_int("repeats", self.repeats)
    checks.positive_int("search_steps", self.search_steps)
    checks.in_range("tolerance", self.tolerance, 0.0, 1.0)


FULL = Settings()
# (E, d) of the self-speculative records (LayerSkip; the best setting of
# `benchmarks/self_speculative_decoding.py` on SmolLM2, BENCHMARKS.md).
SELF_SPECULATIVE_GRID = ((22, 3),)
QUICK = Settings(
  backbones=("transformer",),
  num_prompts=(1,),
  max_new_tokens=16,
  repeats=3,
  search_steps=4,
  tolerance=0.04,
)


def self_speculative_bench():
  """The sibling script `self_speculative_decoding.py`, as a module."""
  path = HERE / "self_speculative_decoding.py"
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def threshold_grid(conf: np.ndarray) -> np.ndarray:
  """Sorted candidate λ: 0, every observed exit confidence, 1.

  Searching over this grid's indices is a bisection on the quantiles of the
  confidences, so it works as well for a random model whose max-softmax
  confidences all lie within 1e-4 of each other as for a trained one.
  """
  return np.unique(np.concatenate([[0.0], np.ravel(conf), [1.0]]))


def simulated_depths(
  conf: np.ndarray, grid: np.ndarray, bounds: tuple[int, ...]
) -> np.ndarray:
  """[M] average exit layer of [Q, E] exit confidences under each grid λ."""
  ok = conf[None] >= grid[:, None, None]  # [M, Q, E]
  ok = np.concatenate([ok, np.ones(ok.shape[:2] + (1,), bool)], axis=-1)
  return np.asarray(bounds[1:])[ok.argmax(-1)].mean(-1)


def search_threshold(
  depth_at,
  grid: np.ndarray,
  guess: int,
  target: float,
  *,
  steps: int,
  tolerance: float,
) -> tuple[float, float, int]:
  """Bisection over `grid` indices for the λ whose depth is nearest `target`.

  Args:
    depth_at: λ -> measured average exit layer (non-decreasing in λ up to
      the changes of trajectory that a different λ causes).
    grid: sorted candidate thresholds (`threshold_grid`).
    guess: index of the first λ to try.
    target: wanted average exit layer.
    steps: at most this many calls of `depth_at`.
    tolerance: stop once |depth − target| ≤ tolerance (layers).

  Returns:
    (λ, its depth, calls made): the closest of the λ tried.
  """
  lo, hi, i, tried = 0, len(grid) - 1, guess, {}
  while len(tried) < steps and i not in tried:
    tried[i] = depth_at(float(grid[i]))
    if abs(tried[i] - target) <= tolerance:
      break
    if tried[i] < target:
      lo, i = i, (i + hi + 1) // 2
    else:
      hi, i = i, (lo + i) // 2
  best = min(tried, key=lambda j: (abs(tried[j] - target), j))
  return float(grid[best]), tried[best], len(tried)


def one_by_one(fn, prompts, lengths) -> list:
  """`fn(prompt [1, T], length [1])` for every prompt: batch 1 each."""
  return [
    fn(prompts[i : i + 1], lengths[i : i + 1]) for i in range(len(prompts))
  ]


def stack(outs: list):
  """Concatenates batch-1 results (arrays or `DecodeOutput`s) on axis 0."""
  return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *outs)


def exit_confidences(
  model, heads, prompts, lengths, full_tokens, config: DecodeConfig
) -> np.ndarray:
  """[Q, E] exit confidences of the full model's decode steps (simulated).

  Teacher-forces prompt + the first N-1 generated tokens; position
  length + n - 1 predicts generated token n.
  """
  n = full_tokens.shape[1]
  seqs = np.zeros((len(prompts), prompts.shape[1] + n - 1), np.int32)
  for row, p, k, g in zip(seqs, prompts, lengths, full_tokens):
    row[: k + n - 1] = np.concatenate([p[:k], g[:-1]])
  sim = simulate_exits(model, heads, seqs, lengths + n - 1, 1.0, config)
  conf = np.asarray(sim.exit_confidence)[..., :-1]  # [P, T', E]
  return np.concatenate([c[k : k + n - 1] for c, k in zip(conf, lengths)])


def find_thresholds(
  model,
  heads,
  prompts,
  lengths,
  full_tokens,
  exit_layers,
  settings: Settings,
  log,
) -> dict:
  """{(mode, target): (λ, stacked DecodeOutput, engine runs)}."""
  n = settings.max_new_tokens
  bounds = (0, *exit_layers, model.num_layers)
  conf = exit_confidences(
    model,
    heads,
    prompts,
    lengths,
    full_tokens,
    DecodeConfig(exit_layers=exit_layers, max_new_tokens=n),
  )
  grid = threshold_grid(conf)
  simulated = simulated_depths(conf, grid, bounds)
  chosen = {}
  for mode in settings.modes:
    config = DecodeConfig(
      exit_layers=exit_layers, state_mode=mode, max_new_tokens=n
    )
    runs = {}

    def depth_at(lam, config=config, runs=runs):
      run = functools.partial(
        generate, model, heads, threshold=lam, config=config
      )
      runs[lam] = stack(one_by_one(run, prompts, lengths))
      return float(np.asarray(runs[lam].exit_layer)[:, 1:].mean())

    for target in TARGETS:
      goal = target * model.num_layers
      guess = int(np.argmin(np.abs(simulated - goal)))
      lam, depth, steps = search_threshold(
        depth_at,
        grid,
        guess,
        goal,
        steps=settings.search_steps,
        tolerance=settings.tolerance * model.num_layers,
      )
      chosen[(mode, target)] = (lam, runs[lam], steps)
      log(
        f"  {mode} target {goal:.1f}: λ={lam:.4g} -> {depth:.2f} layers "
        f"({steps} runs)"
      )
  return chosen


def timed_candidates(
  model, heads, prompts, lengths, exit_layers, chosen, settings: Settings
) -> dict:
  """name -> (fn, ()) for the full model, the prefill and each (mode, λ)."""
  n = settings.max_new_tokens
  max_len = cache_length(prompts.shape[1], n)
  full = functools.partial(generate_full, model, max_new_tokens=n)
  prefill_config = DecodeConfig(exit_layers=exit_layers, max_new_tokens=1)
  prefill = functools.partial(
    generate,
    model,
    heads,
    threshold=1.0,
    config=prefill_config,
    max_len=max_len,
  )
  disabled = functools.partial(
    generate,
    model,
    heads,
    threshold=1.0,
    config=DecodeConfig(
      exit_layers=exit_layers, exits_enabled=False, max_new_tokens=n
    ),
  )
  fns = {"full": full, "prefill": prefill, "exits_disabled": disabled}
  for (mode, _), (lam, _, _) in chosen.items():
    config = DecodeConfig(
      exit_layers=exit_layers, state_mode=mode, max_new_tokens=n
    )
    fns[candidate_name(mode, lam)] = functools.partial(
      generate, model, heads, threshold=lam, config=config
    )
  return {
    name: (functools.partial(one_by_one, fn, prompts, lengths), ())
    for name, fn in fns.items()
  }


def candidate_name(mode: str, lam: float) -> str:
  return f"{mode}@{lam!r}"


def measure_backbone(
  name: str,
  model,
  prompts: np.ndarray,
  lengths: np.ndarray,
  exit_layers: tuple[int, ...],
  settings: Settings,
  log=print,
) -> list[dict]:
  """Searches thresholds, times every run side by side, returns records.

  Args:
    name: the backbone's label in the records.
    model: a `DecoderBackbone`.
    prompts, lengths: [P, T] right-padded prompt ids and their [P] lengths;
      each prompt is decoded alone.
    exit_layers: blocks after which the exits sit.
    settings: tokens, rounds and search budget.
    log: progress printer.

  Returns:
    One record per (state mode, target depth), see the module docstring.
  """
  heads, n = LMHeadExits(), settings.max_new_tokens
  full = stack(
    one_by_one(
      functools.partial(generate_full, model, max_new_tokens=n),
      prompts,
      lengths,
    )
  )
  bounds = (0, *exit_layers, model.num_layers)
  costs = decode_costs(model, heads, bounds, cache_length(prompts.shape[1], n))
  log("  full model decoded, decode step FLOPs counted")
  chosen = find_thresholds(
    model, heads, prompts, lengths, full, exit_layers, settings, log
  )
  candidates = timed_candidates(
    model, heads, prompts, lengths, exit_layers, chosen, settings
  )
  load = [os.getloadavg()[0]]
  log(f"  timing {len(candidates)} candidates (load {load[0]:.2f})")
  times = timing.time_side_by_side(
    candidates, warmup=settings.warmup, repeats=settings.repeats
  )
  load.append(os.getloadavg()[0])
  return [
    make_record(
      name,
      model.num_layers,
      mode,
      target,
      lam,
      steps,
      decode_metrics(out, full, costs),
      times,
      tokens=prompts.shape[0] * n,
      load=load,
    )
    | {"identical_to_full": bool(np.array_equal(stack([out]), full))}
    for (mode, target), (lam, out, steps) in chosen.items()
  ]


def _decode_speedup(t_full: float, t_mode: float, t_prefill: float) -> float:
  # Guarded only for toy models, whose decode time can drown in noise.
  return (t_full - t_prefill) / max(t_mode - t_prefill, 1e-9)


def make_record(
  name: str,
  num_layers: int,
  mode: str,
  target: float,
  lam: float,
  steps: int,
  metrics: dict,
  times: dict[str, timing.Timing],
  *,
  tokens: int,
  load: list[float],
) -> dict:
  """One result row (see the module docstring for the speed-ups).

  `realised_speedup_min` uses the fastest round of each candidate instead
  of the median: on a shared machine, contention only ever adds time.
  """
  full, prefill = times["full"], times["prefill"]
  mode_t = times[candidate_name(mode, lam)]
  realised = _decode_speedup(full.median, mode_t.median, prefill.median)
  theoretical = 1.0 / metrics["flops_fraction"]
  return {
    "backbone": name,
    "state_mode": mode,
    "batch": 1,
    "target_fraction": target,
    "threshold": lam,
    "search_runs": steps,
    "avg_layers": round(metrics["avg_layers"], 4),
    "avg_layers_fraction": round(metrics["avg_layers"] / num_layers, 4),
    "layer_speedup": round(num_layers / metrics["avg_layers"], 4),
    "flops_fraction": round(metrics["flops_fraction"], 4),
    "theoretical_speedup": round(theoretical, 4),
    "realised_speedup": round(realised, 4),
    "ratio": round(realised / theoretical, 4),
    "realised_speedup_e2e": round(full.median / mode_t.median, 4),
    "realised_speedup_min": round(
      _decode_speedup(full.min, mode_t.min, prefill.min), 4
    ),
    "consistency": round(metrics["consistency"], 4),
    "tokens_per_s": round(tokens / mode_t.median, 2),
    "full_tokens_per_s": round(tokens / full.median, 2),
    "seconds": mode_t.median,
    "full_seconds": full.median,
    "prefill_seconds": prefill.median,
    # The engine's cost with exits disabled over `generate_full`'s.
    "exits_disabled_overhead": round(
      times["exits_disabled"].median / full.median - 1.0, 4
    ),
    "load_avg_1m": [round(x, 2) for x in load],
  }


def chat_prompts(tokenizer, count: int) -> tuple[np.ndarray, np.ndarray]:
  """[P, T] right-padded chat-templated TruthfulQA questions and [P] lengths."""
  items = load_truthfulqa()[:count]
  ids = [
    tokenizer.encode(
      tokenizer.apply_chat_template(
        [{"role": "user", "content": item.question}]
      )
    )
    for item in items
  ]
  lengths = np.array([len(i) for i in ids], np.int32)
  prompts = np.zeros((len(ids), lengths.max()), np.int32)
  for row, seq in zip(prompts, ids):
    row[: len(seq)] = seq
  return prompts, lengths


def load_backbone(name: str):
  """(model, exit_layers, description) of a `BACKBONES` entry."""
  if name == "transformer":
    model, _ = load_smollm2()
    return (
      model,
      (8, 15, 22),
      (
        "SmolLM2-135M-Instruct (GGUF Q4_1 weights "
        "dequantised to fp32; 30 blocks, d=576)"
      ),
    )
  model = MambaLM(MAMBA_CONFIGS["mamba-130m"], rngs=nnx.Rngs(0))
  return (
    model,
    (6, 12, 18),
    ("MambaLM, mamba-130m sizes (24 blocks, d=768), random weights"),
  )


def render(
  records: list[dict],
  descriptions: dict[str, str],
  settings: Settings,
  quick: bool,
) -> str:
  """The BENCHMARKS.md section: setup line and table.

  Args:
    records: `measure_backbone` records.
    descriptions: backbone name -> model, exits and prompts in words.
    settings: the run's settings.
    quick: whether this was the `--quick` run.
  """
  header = [
    "backbone",
    "mode",
    "target",
    "avg layers",
    "L/avg",
    "FLOPs",
    "theoretical",
    "realised",
    "ratio",
    "realised e2e",
    "realised min",
    "tok/s",
    "full tok/s",
    "consistency",
    "load",
  ]
  rows = [
    [
      r["backbone"],
      r["state_mode"],
      f"{r['target_fraction']:.2f}",
      f"{r['avg_layers']:.2f} ({r['avg_layers_fraction']:.2f})",
      f"{r['layer_speedup']:.2f}x",
      f"{r['flops_fraction']:.3f}",
      f"{r['theoretical_speedup']:.2f}x",
      f"{r['realised_speedup']:.2f}x",
      f"{r['ratio']:.2f}",
      f"{r['realised_speedup_e2e']:.2f}x",
      f"{r['realised_speedup_min']:.2f}x",
      f"{r['tokens_per_s']:.1f}",
      f"{r['full_tokens_per_s']:.1f}",
      f"{r['consistency']:.2f}",
      "–".join(f"{x:.1f}" for x in r["load_avg_1m"]),
    ]
    for r in records
  ]
  models = "; ".join(f"{name}: {text}" for name, text in descriptions.items())
  device = jax.devices()[0].platform.upper()
  cpu = platform.processor() or platform.machine()
  return (
    f"{models}. Batch 1, greedy, {settings.max_new_tokens} tokens per "
    f"prompt (EOS ignored), fp32, {device} ({cpu}, {os.cpu_count()} cores, "
    f"shared), JAX {jax.__version__}; median of {settings.repeats} "
    f"round-robin repeats after {settings.warmup} warm-up. FLOPs = "
    "flops_fraction; load = 1-minute load average before–after the "
    "timing rounds. Command: `python benchmarks/early_exit_decoding.py"
    f"{' --quick' if quick else ''}`.\n\n" + report.markdown_table(header, rows)
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--quick",
    action="store_true",
    help="transformer only, fewer tokens and repeats; "
    "writes the _quick json and leaves BENCHMARKS.md alone",
  )
  parser.add_argument("--out", type=pathlib.Path, default=None)
  args = parser.parse_args()
  settings = QUICK if args.quick else FULL
  out = args.out or (QUICK_RESULTS if args.quick else RESULTS)
  start = time.perf_counter()
  log = lambda msg: print(
    f"[{time.perf_counter() - start:5.0f} s] {msg}", flush=True
  )
  tokenizer = GGUFTokenizer.from_gguf(smollm2_gguf_path())
  records, descriptions, loaded = [], {}, {}
  for name, count in zip(settings.backbones, settings.num_prompts):
    prompts, lengths = chat_prompts(tokenizer, count)
    model, exit_layers, about = load_backbone(name)
    loaded[name] = (model, prompts, lengths)
    descriptions[name] = (
      f"{about}, exits after {exit_layers}, {count} "
      f"TruthfulQA prompt(s) of {lengths.tolist()} tokens"
    )
    log(f"{name}: {descriptions[name]}")
    records += measure_backbone(
      name, model, prompts, lengths, exit_layers, settings, log=log
    )
  log("done")
  text = render(
    [r for r in records if r["state_mode"] != "self_speculative"],
    descriptions,
    settings,
    args.quick,
  )
  print(text)
  if "transformer" in loaded:  # the same prompts, timed against full again
    records += self_speculative_bench().measure(
      *loaded["transformer"],
      "transformer",
      SELF_SPECULATIVE_GRID,
      settings.max_new_tokens,
      settings.repeats,
      log,
    )
  report.write_json(out, records)
  if not args.quick:
    report.write_section(BENCHMARKS_MD, "early_exit_decoding", text)


if __name__ == "__main__":
  main()
