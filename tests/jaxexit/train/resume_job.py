"""A tiny training run for the kill-and-resume test (run as a script).

  python resume_job.py WORKDIR [--num-steps 60] [--checkpoint-every 5]
      [--sleep 0.0] [--kill-in-save STEP]

Trains a dropout MLP with `jaxexit.train.train`, then restores the final
checkpoint and writes every leaf (parameters, optimizer state, rng) to
`WORKDIR/final.npz`. Prints "start_step=N" before training.

`--kill-in-save STEP` SIGKILLs the process inside the save of STEP: every
file of the step is written to orbax's temporary folder, and the process
dies at the rename that would commit it.
"""

import argparse
import os
import signal
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

from jaxexit import train as train_lib  # noqa: E402

D_IN, D_HID, D_OUT, BATCH = 4, 16, 3, 8


class DropoutMLP(nnx.Module):
  """x -> Linear -> relu -> Dropout(0.5) -> Linear."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(D_IN, D_HID, rngs=rngs)
    self.dropout = nnx.Dropout(0.5)
    self.out = nnx.Linear(D_HID, D_OUT, rngs=rngs)

  def __call__(self, x, *, rng=None):
    h = self.dropout(jax.nn.relu(self.hidden(x)), rngs=rng)
    return self.out(h)


def loss_fn(model, batch, rng):
  pred = model(batch["x"], rng=rng)
  loss = jnp.mean((pred - batch["y"]) ** 2)
  return loss, {"abs_err": jnp.mean(jnp.abs(pred - batch["y"]))}


def make_batch_fn(sleep: float):
  def batch_fn(step: int):
    if sleep:
      time.sleep(sleep)  # Slows the run down so the test can kill it.
    k = jax.random.fold_in(jax.random.key(123), step)
    x = jax.random.normal(k, (BATCH, D_IN))
    y = jnp.stack([x[:, 0] * 2.0, x[:, 1] - x[:, 2], jnp.sin(x[:, 3])], -1)
    return {"x": x, "y": y}

  return batch_fn


def build():
  model = DropoutMLP(rngs=nnx.Rngs(0))
  tx = train_lib.build_optimizer(
    train_lib.OptimConfig(
      name="adamw",
      learning_rate=1e-2,
      weight_decay=1e-4,
      schedule="warmup_cosine",
      warmup_steps=5,
      total_steps=60,
      grad_clip=1.0,
    )
  )
  return model, tx


def dump_final(workdir: str) -> None:
  model, tx = build()
  _, state = train_lib.split_train_state(model, tx)
  ckpt = train_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
  with ckpt:
    restored = ckpt.restore_latest(
      train_lib.abstract_like(state),
      abstract_rng=train_lib.abstract_like(jax.random.key(0)),
    )
  leaves = jax.tree_util.tree_leaves_with_path(restored.state)
  arrays = {jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves}
  arrays["rng"] = np.asarray(jax.random.key_data(restored.rng))
  arrays["step"] = np.asarray(restored.step)
  np.savez(os.path.join(workdir, "final.npz"), **arrays)


def _kill_at_commit(step: int) -> None:
  """SIGKILLs this process when a save tries to commit `step`."""
  rename = os.rename

  def killing_rename(src, dst, *args, **kwargs):
    if os.path.basename(os.fspath(dst)) == str(step):
      os.kill(os.getpid(), signal.SIGKILL)
    return rename(src, dst, *args, **kwargs)

  os.rename = killing_rename


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("workdir")
  parser.add_argument("--num-steps", type=int, default=60)
  parser.add_argument("--checkpoint-every", type=int, default=5)
  parser.add_argument("--sleep", type=float, default=0.0)
  parser.add_argument("--kill-in-save", type=int, default=None)
  args = parser.parse_args()
  if args.kill_in_save is not None:
    _kill_at_commit(args.kill_in_save)
  ckpt_dir = os.path.join(args.workdir, "checkpoints")
  steps = (
    [int(d) for d in os.listdir(ckpt_dir) if d.isdigit()]
    if (os.path.isdir(ckpt_dir))
    else []
  )
  print(f"start_step={max(steps, default=0)}", flush=True)
  model, tx = build()
  train_lib.train(
    model,
    tx,
    loss_fn,
    make_batch_fn(args.sleep),
    num_steps=args.num_steps,
    workdir=args.workdir,
    seed=7,
    checkpoint_every=args.checkpoint_every,
    log_every=1,
    progress=False,
  )
  dump_final(args.workdir)


if __name__ == "__main__":
  main()
