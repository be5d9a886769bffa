"""Self-speculative (LayerSkip) decoding vs the full model at batch 1.

Spec: `llm_exits.md` §1 (mode 3) and §5.3. For each (E, d) the full model
(`generate_full`) and `generate_self_speculative` decode the same prompts
greedily, one prompt at a time, timed side by side (round-robin, medians
after warm-up); EOS is ignored so every run decodes `max_new_tokens`.

* `--quick`: a tiny random Llama (8 blocks, d=64, V=256), < 2 min;
* default: SmolLM2-135M-Instruct (offline GGUF, 30 blocks) on chat-templated
  TruthfulQA questions. Its early blocks were never trained to feed the LM
  head, so drafts are often wrong: expect low acceptance and speed-up < 1.

  python benchmarks/self_speculative_decoding.py --quick
  python benchmarks/self_speculative_decoding.py   # BENCHMARKS.md section

Records (`state_mode="self_speculative"`) go to
`benchmarks/results/self_speculative_decoding{_quick}.json`
(`benchmarks/early_exit_decoding.py` times its own best (E, d) against
the other modes, with trained draft heads):

* tokens_per_s, full_tokens_per_s: generated tokens / median seconds
  (prefill included);
* realised_speedup = t_full / t_self_speculative (medians);
* theoretical_speedup: the cost model (`SelfSpeculativeCost`) at the
  measured acceptance rate, L / sequential layers per token: a block run on
  the d + 1 verified positions costs as one (memory-bound decoding);
* acceptance_rate: mean accepted drafts per verify pass (of d);
* consistency: fraction of tokens equal to the full model's;
  identical_to_full: all equal (greedy self-speculation is lossless).
"""

import argparse
import functools
import os
import pathlib
import platform
import sys
import time

import jax
import numpy as np
from flax import nnx

from jaxexit import report, timing
from jaxexit.decoding.full import generate_full
from jaxexit.decoding.self_speculative import generate_self_speculative
from jaxexit.decoding.speculative import SelfSpeculativeCost
from jaxexit.models.llama import LlamaConfig, LlamaLM

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results" / "self_speculative_decoding.json"
QUICK_RESULTS = HERE / "results" / "self_speculative_decoding_quick.json"
BENCHMARKS_MD = HERE.parent / "BENCHMARKS.md"
MODE = "self_speculative"
QUICK = {"grid": ((2, 2), (4, 3), (6, 4)), "tokens": 32, "repeats": 3}
FULL = {"grid": ((8, 3), (15, 3), (22, 3), (22, 6)), "tokens": 32, "repeats": 3}


def tiny_llama():
  """The `--quick` backbone: random weights, (model, prompts, lengths)."""
  cfg = LlamaConfig(
    vocab_size=256,
    d_model=64,
    num_layers=8,
    num_heads=4,
    num_kv_heads=2,
    mlp_hidden=128,
    max_position=128,
  )
  model = LlamaLM(cfg, rngs=nnx.Rngs(0))
  prompts = np.random.default_rng(0).integers(0, 256, (2, 12), np.int32)
  return model, prompts, np.array([12, 12], np.int32), "tiny random Llama"


def smollm2(count: int = 2):
  """SmolLM2-135M-Instruct on `count` TruthfulQA chat prompts."""
  sys.path.insert(0, str(HERE))
  from early_exit_decoding import chat_prompts  # noqa: E402 (script dir)

  from jaxexit.models.gguf_weights import load_smollm2

  model, tokenizer = load_smollm2()
  prompts, lengths = chat_prompts(tokenizer, count)
  return model, prompts, lengths, "SmolLM2-135M-Instruct"


def one_by_one(fn, prompts, lengths):
  """`fn(prompt [1, T], length [1])` per prompt (batch 1), blocked on."""
  outs = [
    fn(prompts[i : i + 1], lengths[i : i + 1]) for i in range(len(prompts))
  ]
  return jax.block_until_ready(outs)


def measure(
  model,
  prompts,
  lengths,
  name,
  grid,
  tokens,
  repeats,
  log=print,
  draft_heads=None,
):
  """Times the full model and each (E, d, draft head) side by side.

  Args:
    draft_heads: {E: {head name: `DecoderExitHeads` or None}}; None (the
      default, and any E it leaves out) drafts through the shared head
      only, named "shared_head".

  Returns:
    One record per (E, d, draft head).
  """
  full_fn = functools.partial(generate_full, model, max_new_tokens=tokens)
  heads = lambda e: (draft_heads or {}).get(e, {"shared_head": None})
  spec_fns = {
    (e, d, head): functools.partial(
      generate_self_speculative,
      model,
      exit_layer=e,
      draft_len=d,
      max_new_tokens=tokens,
      exit_head=module,
    )
    for e, d in grid
    for head, module in heads(e).items()
  }
  full = np.concatenate(one_by_one(full_fn, prompts, lengths))
  outs = {k: one_by_one(fn, prompts, lengths) for k, fn in spec_fns.items()}
  log(f"  compiled full + {len(spec_fns)} settings")
  candidates = {"full": (one_by_one, (full_fn, prompts, lengths))}
  for key, fn in spec_fns.items():
    candidates[str(key)] = (one_by_one, (fn, prompts, lengths))
  load = [os.getloadavg()[0]]
  times = timing.time_side_by_side(candidates, warmup=1, repeats=repeats)
  load.append(os.getloadavg()[0])
  n_tokens = prompts.shape[0] * tokens
  records = []
  for (e, d, head), runs in outs.items():
    got = np.concatenate([np.asarray(o.tokens) for o in runs])
    accepted = sum(int(np.sum(o.accepted)) for o in runs)
    rounds = sum(int(np.sum(o.row_rounds)) for o in runs)
    rate = accepted / max(rounds, 1)
    cost = SelfSpeculativeCost(
      num_layers=model.num_layers, exit_layer=e, draft_len=d, accepted=rate
    )
    t, t_full = times[str((e, d, head))].median, times["full"].median
    records.append(
      {
        "backbone": name,
        "state_mode": MODE,
        "batch": 1,
        "exit_layer": e,
        "draft_len": d,
        "head": head,
        "num_layers": model.num_layers,
        "max_new_tokens": tokens,
        "prompts": int(prompts.shape[0]),
        "tokens_per_s": round(n_tokens / t, 2),
        "full_tokens_per_s": round(n_tokens / t_full, 2),
        "realised_speedup": round(t_full / t, 4),
        "theoretical_speedup": round(cost.theoretical_speedup, 4),
        "acceptance_rate": round(rate, 4),
        "sequential_layers_per_token": round(
          cost.sequential_layers_per_token, 4
        ),
        "layer_positions_per_token": round(cost.layer_positions_per_token, 4),
        "verify_passes": rounds,
        "draft_steps": rounds * (d + 1),
        "consistency": round(float(np.mean(got == full)), 4),
        "identical_to_full": bool(np.array_equal(got, full)),
        "seconds": t,
        "full_seconds": t_full,
        "load_avg_1m": [round(x, 2) for x in load],
      }
    )
  return records


def render(records: list[dict], about: str, quick: bool, repeats: int) -> str:
  """The BENCHMARKS.md section: setup line and table."""
  header = [
    "backbone",
    "E",
    "d",
    "acceptance (of d)",
    "seq. layers/token",
    "theoretical",
    "realised",
    "tok/s",
    "full tok/s",
    "identical",
  ]
  rows = [
    [
      r["backbone"],
      r["exit_layer"],
      r["draft_len"],
      f"{r['acceptance_rate']:.2f}",
      f"{r['sequential_layers_per_token']:.1f} / {r['num_layers']}",
      f"{r['theoretical_speedup']:.2f}x",
      f"{r['realised_speedup']:.2f}x",
      f"{r['tokens_per_s']:.1f}",
      f"{r['full_tokens_per_s']:.1f}",
      str(r["identical_to_full"]),
    ]
    for r in records
  ]
  device = jax.devices()[0].platform.upper()
  cpu = platform.processor() or platform.machine()
  r0 = records[0]
  return (
    f"{about}: {r0['prompts']} prompt(s) decoded one at a time (batch 1), "
    f"greedy, {r0['max_new_tokens']} tokens each (EOS ignored), fp32, "
    f"{device} ({cpu}, {os.cpu_count()} cores, shared), JAX "
    f"{jax.__version__}; median of {repeats} round-robin repeats after 1 "
    "warm-up; realised = full / self-speculative seconds (prefill "
    "included); theoretical = L / sequential layers per token at the "
    "measured acceptance. Command: `python "
    f"benchmarks/self_speculative_decoding.py{' --quick' if quick else ''}`"
    ".\n\n" + report.markdown_table(header, rows)
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny Llama")
  args = parser.parse_args()
  settings = QUICK if args.quick else FULL
  start = time.perf_counter()
  log = lambda msg: print(f"[{time.perf_counter() - start:5.0f} s] {msg}")
  model, prompts, lengths, about = (tiny_llama if args.quick else smollm2)()
  log(f"{about}: prompts of {lengths.tolist()} tokens")
  records = measure(
    model,
    prompts,
    lengths,
    "tiny_llama" if args.quick else "transformer",
    settings["grid"],
    settings["tokens"],
    settings["repeats"],
    log,
  )
  text = render(records, about, args.quick, settings["repeats"])
  print(text)
  report.write_json(QUICK_RESULTS if args.quick else RESULTS, records)
  if not args.quick:
    report.write_section(BENCHMARKS_MD, "self_speculative_decoding", text)


if __name__ == "__main__":
  main()
