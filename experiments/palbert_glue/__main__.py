"""python -m experiments.palbert_glue — foundation demo on real SST-2.

Trains a small encoder with an exit after every layer (PABEE-weighted exit
loss, shared resumable loop), then evaluates exit rules (max-softmax,
DeeBERT entropy, PABEE patience, static depth, full model) in `simulate`
for accuracy and average depth, checks `compacted` and `early_stop` make the
same decisions, and measures realised speed-ups against the full model at
batch 32 (`compacted`) and batch 1 (`early_stop`). Writes results.json,
results.md and pareto.png into --out. See configs.py for the presets.
"""

import argparse
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.palbert_glue import configs, plots, sst2
from jaxexit import exits, report, train
from jaxexit.data import add_data_dir_flag
from jaxexit.execution import make_runner, measure_speedup, simulate
from jaxexit.nn.encoder import ExitEncoder


def exit_loss(model, batch, rng):
  """PABEE-weighted cross-entropy over every exit (all layers run)."""
  del rng
  stack, params = model.exit_stack()
  res = simulate(stack, exits.never(), params,
                 model.embed_tokens(batch["tokens"]), unroll=True)
  ce = exits.cross_entropy_per_exit(res.per_layer.logits, batch["labels"])
  loss = exits.weighted_exit_loss(ce, exits.pabee_weights(stack.num_layers))
  acc = jnp.mean(jnp.argmax(res.per_layer.logits[:, -1], -1)
                 == batch["labels"])
  return loss, {"loss": loss, "last_exit_acc": acc}


def batch_fn_for(tokens, labels, batch_size, seed):
  """`step -> batch`: a fresh permutation each epoch, a pure function."""
  per_epoch = len(labels) // batch_size

  def batch_fn(step):
    epoch, i = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(len(labels))
    idx = perm[i * batch_size:(i + 1) * batch_size]
    return {"tokens": tokens[idx], "labels": labels[idx]}

  return batch_fn


def rule_grid(cfg: configs.DemoConfig):
  """(method, parameter, rule) triples evaluated on dev."""
  grid = [("full", None, exits.never())]
  grid += [("static", k, exits.fixed_depth(k)) for k in cfg.static_depths]
  grid += [("max-softmax", t, exits.max_softmax_rule(t))
           for t in cfg.max_softmax_thresholds]
  grid += [("entropy", s, exits.entropy_rule(s))
           for s in cfg.entropy_thresholds]
  grid += [("pabee", p, exits.patience_rule(p)) for p in cfg.patiences]
  return grid


def batches_of(carry, size):
  """Splits a carry into full batches of `size` (the remainder is dropped)."""
  n = (jax.tree.leaves(carry)[0].shape[0] // size) * size
  return [jax.tree.map(lambda x: x[i:i + size], carry)
          for i in range(0, n, size)]


def evaluate(model, cfg, dev_tokens, dev_labels):
  stack, params = model.exit_stack()
  carry = jax.jit(model.embed_tokens)(jnp.asarray(dev_tokens))
  b32 = batches_of(carry, cfg.batch_size)[:cfg.timing_batches]
  b1 = batches_of(jax.tree.map(lambda x: x[:cfg.batch1_examples], carry), 1)
  records = []
  for method, param, rule in rule_grid(cfg):
    res = make_runner("simulate", stack, rule)(params, carry)
    compacted = make_runner("compacted", stack, rule)(params, carry)
    if not np.array_equal(res.exit_layer, compacted.exit_layer):
      raise AssertionError(f"{method}={param}: compacted exits differ")
    preds = np.asarray(jnp.argmax(res.outputs.logits, -1))
    fast = measure_speedup(stack, rule, params, b32, mode="compacted",
                           repeats=cfg.timing_repeats)
    slow = measure_speedup(stack, rule, params, b1, mode="early_stop",
                           repeats=cfg.timing_repeats)
    layers = np.asarray(res.layers_used)
    records.append({
        "task": cfg.task, "method": method, "param": param,
        "metric": "accuracy",
        "score": round(float(np.mean(preds == dev_labels)), 4),
        "avg_layers": round(float(layers.mean()), 3),
        "theoretical_speedup": round(float(stack.num_layers / layers.mean()),
                                     3),
        "realised_speedup": round(fast.realised_speedup, 3),
        "realised_speedup_batch1": round(slow.realised_speedup, 3),
    })
    print(records[-1], flush=True)
  return records


def write_results(records, out: pathlib.Path, cfg, preset):
  report.write_json(out / "results.json", records)
  header = ["method", "param", "accuracy", "avg layers", "theoretical",
            "realised b32 (compacted)", "realised b1 (early_stop)"]
  rows = [[r["method"], r["param"], f'{r["score"]:.3f}', r["avg_layers"],
           f'{r["theoretical_speedup"]:.2f}x', f'{r["realised_speedup"]:.2f}x',
           f'{r["realised_speedup_batch1"]:.2f}x'] for r in records]
  (out / "results.md").write_text(
      f"# Foundation demo: exits on SST-2 dev (preset `{preset}`)\n\n"
      f"{cfg.model.num_layers}-layer encoder, d={cfg.model.d_model}, "
      f"{cfg.train_steps} steps; hashed-word tokens. Not PALBERT yet.\n\n"
      + report.markdown_table(header, rows) + "\n")
  plots.pareto(records, out / "pareto.png",
               title=f"SST-2 dev, {cfg.model.num_layers}-layer demo encoder")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="smoke", choices=["smoke", "cpu"])
  parser.add_argument("--task", default="sst2", choices=["sst2"])
  parser.add_argument("--out", type=pathlib.Path,
                      default=pathlib.Path("runs/palbert_glue_demo"))
  parser.add_argument("--no-progress", action="store_true")
  add_data_dir_flag(parser)
  args = parser.parse_args(argv)
  cfg = configs.get_config(args.preset)
  m = cfg.model
  tokens, labels = sst2.load("train", m.vocab_size, m.max_len, args.data_dir)
  dev_tokens, dev_labels = sst2.load("dev", m.vocab_size, m.max_len,
                                     args.data_dir)
  model = ExitEncoder(m, rngs=nnx.Rngs(cfg.seed))
  tx = train.build_optimizer(train.OptimConfig(
      name="adamw", learning_rate=cfg.learning_rate, weight_decay=0.01))
  model, metrics = train.train(
      model, tx, exit_loss,
      batch_fn_for(tokens, labels, cfg.batch_size, cfg.seed),
      num_steps=cfg.train_steps, workdir=args.out / "train", seed=cfg.seed,
      checkpoint_every=cfg.checkpoint_every, log_every=25,
      progress=False if args.no_progress else None)
  print(f"trained: {metrics}")
  records = evaluate(model, cfg, dev_tokens, dev_labels)
  write_results(records, args.out, cfg, args.preset)
  print(f"wrote {args.out}/results.json, results.md, pareto.png")


if __name__ == "__main__":
  main()
