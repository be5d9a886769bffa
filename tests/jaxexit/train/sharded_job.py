"""A tiny Llama trained on a mesh, for the sharded kill-and-resume test.

  python sharded_job.py WORKDIR --mesh data=2,fsdp=2,tensor=2
      [--num-steps 24] [--checkpoint-every 4] [--sleep 0.0] [--dump-only]

Run with `XLA_FLAGS=--xla_force_host_platform_device_count=N` for a mesh
of N simulated devices. Trains with `jaxexit.train.train(mesh=...)`
(family inferred), then restores the newest checkpoint onto `--mesh` with
the rules' shardings and writes every leaf to `WORKDIR/final.npz`; with
`--dump-only` it only restores and writes (e.g. onto a 4-device mesh).
Prints "start_step=N" before training and "restored_on=N devices" after
checking that every restored array has its target sharding.
"""

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

from jaxexit import sharding, train  # noqa: E402
from jaxexit.models import LlamaLM  # noqa: E402
from jaxexit.models.llama_weights import LLAMA_CONFIGS  # noqa: E402
from jaxexit.train.lm import causal_lm_loss  # noqa: E402

BATCH, LENGTH, SEED = 8, 12, 3


def build():
  return LlamaLM(LLAMA_CONFIGS["tiny"], rngs=nnx.Rngs(0)), optax.adamw(1e-2)


def make_batch_fn(sleep: float, vocab: int):
  def batch_fn(step: int):
    if sleep:
      time.sleep(sleep)  # Slows the run down so the test can kill it.
    key = jax.random.fold_in(jax.random.key(11), step)
    return {"tokens": jax.random.randint(key, (BATCH, LENGTH), 0, vocab)}

  return batch_fn


def dump_final(workdir: str, mesh) -> None:
  """Restores the newest checkpoint onto `mesh` and writes final.npz."""
  model, tx = build()
  _, state = train.split_train_state(model, tx)
  shardings = sharding.state_shardings(state, mesh, family="llama")
  with train.Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    restored = ckpt.restore_latest(
      train.abstract_like(state, shardings),
      abstract_rng=train.abstract_like(jax.random.key(0)),
    )
  placed = jax.tree.map(
    lambda x, s: x.sharding.is_equivalent_to(s, x.ndim),
    restored.state,
    shardings,
  )
  assert all(jax.tree.leaves(placed)), placed
  leaves = jax.tree_util.tree_leaves_with_path(restored.state)
  arrays = {jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves}
  arrays["step"] = np.asarray(restored.step)
  np.savez(os.path.join(workdir, "final.npz"), **arrays)
  print(f"restored_on={mesh.size} devices", flush=True)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("workdir")
  parser.add_argument("--mesh", default="data=2,fsdp=2,tensor=2")
  parser.add_argument("--num-steps", type=int, default=24)
  parser.add_argument("--checkpoint-every", type=int, default=4)
  parser.add_argument("--sleep", type=float, default=0.0)
  parser.add_argument("--dump-only", action="store_true")
  args = parser.parse_args()
  mesh = sharding.make_mesh(args.mesh)
  if not args.dump_only:
    ckpt_dir = os.path.join(args.workdir, "checkpoints")
    steps = os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []
    start = max((int(d) for d in steps if d.isdigit()), default=0)
    print(f"start_step={start}", flush=True)
    model, tx = build()
    train.train(
      model,
      tx,
      causal_lm_loss,
      make_batch_fn(args.sleep, model.vocab_size),
      num_steps=args.num_steps,
      workdir=args.workdir,
      seed=SEED,
      checkpoint_every=args.checkpoint_every,
      log_every=1,
      progress=False,
      mesh=mesh,
    )
  dump_final(args.workdir, mesh)


if __name__ == "__main__":
  main()
