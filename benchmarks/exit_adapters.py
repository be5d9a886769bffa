"""Exit adapters trained for drafting: agreement and self-speculative speed.

Spec: `llm_exits.md` §5.3 (LayerSkip's early-exit loss), §3.2 (DYNAMAX's
MLP exits). At each exit layer E of a frozen backbone a DYNAMAX `mlp` exit
(`jaxexit.methods.dynamax`: RMSNorm → D→2D SiLU → 2D→D residual, output
zero-initialised, then the frozen shared norm + LM head) is trained by
distillation to the final layer alone (KL(p_L ‖ p_E); no CE, no score
term: LayerSkip's early-exit loss without continual pre-training) on
hidden states cached once from GSM8K + CommonsenseQA training text
(`jaxexit.methods.dynamax_train`, orbax checkpoints under `--workdir`,
resumable, fingerprinted with the backbone's weights and the tokens).

Reported per E: top-1 agreement with the final layer on held-out GSM8K test
text before training (the shared head alone) and after, and
self-speculative decoding (`generate_self_speculative`, greedy, lossless)
at (E, d) drafting through the shared head and through the trained adapter,
timed side by side with `generate_full` (acceptance, tokens/s, speed-up,
identical to full).

  python benchmarks/exit_adapters.py --quick   # tiny random Llama, < 2 min
  python benchmarks/exit_adapters.py           # SmolLM2, BENCHMARKS.md

Writes `benchmarks/results/exit_adapters{_quick}.json`: one record per
(E, d, draft head) of `self_speculative_decoding.measure` (acceptance,
tokens/s, realised and theoretical speed-up, identical to full, ...) plus
`"agreement_before"` and `"agreement_after"` of its E.
"""

import argparse
import dataclasses
import functools
import importlib.util
import os
import pathlib
import time

import jax
import numpy as np

from jaxexit import report
from jaxexit.data import text
from jaxexit.methods import dynamax_train, exit_adapter

HERE = pathlib.Path(__file__).resolve().parent
BENCHMARKS_MD = HERE.parent / "BENCHMARKS.md"


@dataclasses.dataclass(frozen=True)
class Settings:
  """One run's sizes.

  Attributes:
    exit_layers: E values (an adapter each).
    draft_lens: d values timed at every E.
    train_rows, eval_rows: packed text rows of `seq_len` tokens.
    steps, batch_size, learning_rate: adapter training.
    prompts, max_new_tokens, repeats: the timed decoding.
  """

  exit_layers: tuple[int, ...]
  draft_lens: tuple[int, ...]
  train_rows: int
  eval_rows: int
  seq_len: int
  steps: int
  batch_size: int
  learning_rate: float
  prompts: int
  max_new_tokens: int
  repeats: int


FULL = Settings(
  exit_layers=(15, 22),
  draft_lens=(3,),
  train_rows=512,
  eval_rows=64,
  seq_len=64,
  steps=300,
  batch_size=4,
  learning_rate=1e-3,
  prompts=2,
  max_new_tokens=32,
  repeats=3,
)
QUICK = Settings(
  exit_layers=(2, 4),
  draft_lens=(2,),
  train_rows=64,
  eval_rows=16,
  seq_len=32,
  steps=60,
  batch_size=8,
  learning_rate=3e-3,
  prompts=2,
  max_new_tokens=16,
  repeats=2,
)


def _sibling(name: str):
  """A sibling benchmark script, as a module."""
  path = HERE / f"{name}.py"
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def backbone_and_text(quick: bool, settings: Settings, data_dir=None):
  """(model, train rows, eval rows, prompts, lengths, description)."""
  spec = _sibling("self_speculative_decoding")
  if quick:
    model, prompts, lengths, about = spec.tiny_llama()
    rng = np.random.default_rng(0)
    rows = lambda n: rng.integers(0, model.vocab_size, (n, settings.seq_len))
    return (
      model,
      rows(settings.train_rows),
      rows(settings.eval_rows),
      (
        prompts,
        lengths,
        about,
      ),
    )
  from jaxexit.data.gguf_tokenizer import GGUFTokenizer
  from jaxexit.models.gguf_weights import smollm2_gguf_path

  model, prompts, lengths, about = spec.smollm2(settings.prompts)
  tok = GGUFTokenizer.from_gguf(smollm2_gguf_path())

  rows = functools.partial(
    exit_adapter.text_rows,
    tok,
    seq_len=settings.seq_len,
    data_dir=data_dir,
  )
  train = rows(text.LM_SOURCES, "train", settings.train_rows, seed=0)
  held_out = rows(("gsm8k",), "test", settings.eval_rows, seed=1)
  return model, train, held_out, (prompts, lengths, about)


def run(quick: bool, workdir: pathlib.Path, log=print) -> tuple[list, str]:
  """Trains the adapters and times the drafting; (records, about)."""
  settings = QUICK if quick else FULL
  model, train_rows, eval_rows, (prompts, lengths, about) = backbone_and_text(
    quick, settings
  )
  tied_to = exit_adapter.fingerprint(model, train_rows)
  training = exit_adapter.AdapterTraining(
    steps=settings.steps,
    batch_size=settings.batch_size,
    learning_rate=settings.learning_rate,
  )
  extract = functools.partial(
    dynamax_train.exit_features,
    model,
    exit_layers=settings.exit_layers,
    progress=False,
  )
  full_len = lambda rows: np.full(len(rows), rows.shape[1], np.int32)
  train_f = extract(train_rows, full_len(train_rows))
  eval_f = extract(eval_rows, full_len(eval_rows))
  log(f"{about}: features of {len(train_rows)} + {len(eval_rows)} rows")
  heads, agreement = {}, {}
  for i, layer in enumerate(settings.exit_layers):
    adapter = exit_adapter.train_exit_adapter(
      model,
      exit_adapter.one_exit(train_f, i),
      layer,
      training,
      workdir,
      tied_to,
    )
    agreement[layer] = exit_adapter.agreement(
      model, adapter, exit_adapter.one_exit(eval_f, i)
    )
    log(
      f"  exit {layer}: held-out agreement {agreement[layer][0]:.3f} -> "
      f"{agreement[layer][1]:.3f}"
    )
    heads[layer] = {"shared_head": None, "adapter": adapter}
  records = _sibling("self_speculative_decoding").measure(
    model,
    prompts,
    lengths,
    "tiny_llama" if quick else "transformer",
    [(e, d) for e in settings.exit_layers for d in settings.draft_lens],
    settings.max_new_tokens,
    settings.repeats,
    log,
    draft_heads=heads,
  )
  for r in records:
    before, after = agreement[r["exit_layer"]]
    r |= {"agreement_before": before, "agreement_after": after}
  return records, about


def render(records: list[dict], about: str, quick: bool) -> str:
  """The BENCHMARKS.md section: setup line and table."""
  header = [
    "E",
    "d",
    "draft head",
    "agreement (held-out)",
    "acceptance (of d)",
    "theoretical",
    "realised",
    "tok/s",
    "full tok/s",
    "identical",
  ]
  rows = [
    [
      r["exit_layer"],
      r["draft_len"],
      r["head"],
      f"{r['agreement_before']:.3f}"
      if r["head"] == "shared_head"
      else f"{r['agreement_after']:.3f}",
      f"{r['acceptance_rate']:.2f}",
      f"{r['theoretical_speedup']:.2f}x",
      f"{r['realised_speedup']:.2f}x",
      f"{r['tokens_per_s']:.1f}",
      f"{r['full_tokens_per_s']:.1f}",
      str(r["identical_to_full"]),
    ]
    for r in records
  ]
  settings = QUICK if quick else FULL
  return (
    f"{about}; one `mlp` adapter per E trained by KL to the final layer "
    f"({settings.steps} steps x {settings.batch_size} rows of "
    f"{settings.seq_len} tokens of GSM8K + CommonsenseQA train text); "
    "agreement = top-1 agreement with the final layer on held-out GSM8K "
    "test text; decoding: the self-speculative benchmark's prompts, greedy, "
    f"batch 1, {os.cpu_count()} shared CPU cores, JAX {jax.__version__}; "
    "theoretical = L / sequential layers per token at the measured "
    "acceptance. Command: `python benchmarks/exit_adapters.py"
    f"{' --quick' if quick else ''}`.\n\n" + report.markdown_table(header, rows)
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="tiny Llama")
  parser.add_argument(
    "--workdir",
    type=pathlib.Path,
    default=pathlib.Path("runs/exit_adapters"),
    help="adapter checkpoints (a rerun resumes)",
  )
  args = parser.parse_args()
  start = time.perf_counter()
  log = lambda msg: print(f"[{time.perf_counter() - start:5.0f} s] {msg}")
  workdir = args.workdir / ("quick" if args.quick else "smollm2")
  records, about = run(args.quick, workdir, log)
  text_md = render(records, about, args.quick)
  print(text_md)
  name = "exit_adapters_quick.json" if args.quick else "exit_adapters.json"
  report.write_json(HERE / "results" / name, records)
  if not args.quick:
    report.write_section(BENCHMARKS_MD, "exit_adapters", text_md)


if __name__ == "__main__":
  main()
