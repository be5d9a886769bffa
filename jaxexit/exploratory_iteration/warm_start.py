"""Supervised warm start of the ExIt toy policy (exploratory_iteration.md
§11.2).

The warm-started policy stands in for the paper's pretrained LLM: a weak
"noisy reviser" with about zero net self-improvement. Each step draws a fresh
batch from the domain's `sft_examples` with key `fold_in(key, step)` and
takes one Adam step on the masked next-token loss of the target response
(`jaxexit.train.make_train_step`). Steps run as a jitted `lax.scan` in a few
chunks with a progress bar; chunking does not change the result, which
depends on the key alone. Several seeds train at once with `jax.vmap` when
`key` has a leading axis.

Axes: S seeds, B examples, R response tokens.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxexit import checks
from jaxexit.exploratory_iteration.domains.base import Domain, SFTBatch
from jaxexit.exploratory_iteration.policy import (
  PolicyConfig,
  make_policy,
  response_logprobs,
)
from jaxexit.train.optim import OptimConfig, build_optimizer
from jaxexit.train.progress import ProgressBar
from jaxexit.train.step import make_train_step, split_train_state
from jaxexit.typing import Array


def sft_loss(
  model, domain: Domain, batch: SFTBatch
) -> tuple[Array, dict[str, Array]]:
  """Mean negative log-likelihood of the target tokens under the masked
  policy (forced steps, e.g. SortChain's PAD, add 0).

  Args:
    model: the policy (`LlamaLM`).
    domain: the domain of `batch`.
    batch: warm-start examples.

  Returns:
    (loss, {"loss", "sequence_nll", "confident"}): `sequence_nll` is the
    summed NLL per response, `confident` the share of responses whose every
    target token has probability > 1/2 (so greedy decoding reproduces
    them).
  """
  logp = response_logprobs(
    model, domain, batch.tasks, batch.prev, batch.mode, batch.target
  )  # [B, R]
  loss = -jnp.mean(logp)
  confident = jnp.mean(jnp.all(logp > jnp.log(0.5), axis=1))
  return loss, {
    "loss": loss,
    "sequence_nll": -jnp.mean(jnp.sum(logp, 1)),
    "confident": confident,
  }


def _train_state(domain: Domain, cfg: PolicyConfig, lr: float, key):
  model = make_policy(domain, cfg, nnx.Rngs(key))
  tx = build_optimizer(OptimConfig(name="adam", learning_rate=lr))
  return split_train_state(model, tx)


@functools.partial(jax.jit, static_argnames=("domain", "cfg", "lr", "batched"))
def _init(key, *, domain, cfg, lr, batched):
  init = lambda k: _train_state(domain, cfg, lr, k)[1]
  return jax.vmap(init)(key) if batched else init(key)


@functools.partial(
  jax.jit,
  static_argnames=("domain", "cfg", "lr", "batch", "num_steps", "batched"),
)
def _chunk(state, key, start, *, domain, cfg, lr, batch, num_steps, batched):
  graphdef, _ = _train_state(domain, cfg, lr, jax.random.key(0))
  step = make_train_step(lambda m, b, rng: sft_loss(m, domain, b), donate=False)

  def run(state, key):
    def body(state, i):
      examples = domain.sft_examples(jax.random.fold_in(key, i), batch)
      state, metrics = step(graphdef, state, examples, None)
      return state, metrics["loss"]

    return jax.lax.scan(body, state, start + jnp.arange(num_steps))

  return jax.vmap(run)(state, key) if batched else run(state, key)


def warm_start(
  domain: Domain,
  policy_cfg: PolicyConfig,
  key: Array,
  *,
  steps: int = 800,
  batch: int = 256,
  lr: float = 2e-3,
  chunks: int = 8,
  progress: bool | None = None,
) -> tuple[nnx.State, Array]:
  """Trains a fresh policy on the domain's warm-start mix.

  Args:
    domain: the domain.
    policy_cfg: the policy sizes.
    key: typed key, shape () or [S] (S seeds trained together).
    steps: Adam steps.
    batch: examples per step.
    lr: constant Adam learning rate.
    chunks: jitted scans the steps are split into (progress updates);
      the result does not depend on it.
    progress: show a progress bar (None: only on a terminal).

  Returns:
    (params, losses): the policy's `nnx.State` (merge with
    `policy_graphdef(domain, policy_cfg)`), with a leading S axis when
    `key` has one, and the per-step losses [steps] (or [S, steps]).
  """
  for name, value in (("steps", steps), ("batch", batch), ("chunks", chunks)):
    checks.positive_int(name, value)
  checks.in_range("lr", lr, 0, 1, low_open=True)
  if key.ndim > 1:
    raise ValueError(f"key must have shape () or [S]; got {key.shape}")
  batched = key.ndim == 1
  k_init, k_data = (
    jax.vmap(jax.random.split, out_axes=1)(key)
    if batched
    else jax.random.split(key)
  )
  static = dict(domain=domain, cfg=policy_cfg, lr=float(lr), batched=batched)
  state = _init(k_init, **static)
  bounds = [steps * c // chunks for c in range(chunks + 1)]
  losses = []
  with ProgressBar(steps, enabled=progress, desc="warm start") as bar:
    for lo, hi in zip(bounds[:-1], bounds[1:]):
      if hi == lo:
        continue
      state, loss = _chunk(
        state, k_data, jnp.int32(lo), batch=batch, num_steps=hi - lo, **static
      )
      losses.append(loss)
      bar.update(hi - lo, {"loss": loss[..., -1].mean()})
  return state[0], jnp.concatenate(losses, axis=-1)
