# Over 400 lines: 354 before ruff format; one iteration and config.
"""The ExIt / GRPO training loop on a synthetic domain (spec §4 of
`exploratory_iteration.md`).

One iteration (Algorithm 1, batched; `train_iteration`):

  1. draw P fresh base tasks; `select_starts` replays buffer entries with
     probability p once the buffer holds B_min (methods with a buffer);
  2. G rollouts per start from the current policy (`sample_responses`);
  3. verify: quality q of the new answer; reward = q (base and divergence
     steps, and improvement steps under `improve_reward="quality"`) or
     r_imp(q, q_prev) (`"normalized_delta"`, §3.6);
  4. group advantages (× the diversity bonus for full ExIt), `epochs` GRPO
     updates of the clipped surrogate;
  5. S = Var_G(reward) (or of q, `score_on`); the buffer rescores replayed
     starts, inserts fresh base tasks and, for the self-iteration methods,
     every rollout's answer as a child entry inheriting S;
  6. every M iterations θ_ref ← α·θ + (1 − α)·θ_ref.

Every method runs the same P·G rollouts and `epochs` gradient steps per
iteration (compute-matched, `metrics["rollouts"]`, `metrics["updates"]`);
they differ only in where starts come from and what enters the buffer:

  grpo        fresh base tasks only, no buffer
  curriculum  the buffer holds base tasks (replayed ∝ exp(κS)), no children
  improve     + every rollout becomes an improve-able child (p_div = 0)
  diverge     + divergence prompts with probability p_div
  exit        + the multiplicative diversity bonus on advantages

`base` is the warm-started policy, untrained. A whole iteration is
fixed-shape jnp code: `train` runs chunks of iterations as one `lax.scan`
each, `jax.vmap`ped over seeds.

Axes: S seeds, P prompts, G generations, N = P·G rollouts, R response tokens,
A answer length, I iterations.
"""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jaxtyping import Key

from jaxexit import checks
from jaxexit.exploratory_iteration.buffer import (
  BufferConfig,
  TaskBuffer,
  buffer_size,
  buffer_stats,
  init_buffer,
)
from jaxexit.exploratory_iteration.diversity import diversity_coefficients
from jaxexit.exploratory_iteration.domains.base import Domain
from jaxexit.exploratory_iteration.episodes import (
  MODE_DIVERGE,
  MODE_IMPROVE,
  expand_children,
  select_starts,
  update_buffer,
)
from jaxexit.exploratory_iteration.learnability import group_learnability
from jaxexit.exploratory_iteration.policy import (
  response_logprobs,
  sample_responses,
)
from jaxexit.exploratory_iteration.rewards import (
  IMPROVE_REWARDS,
  improvement_reward,
)
from jaxexit.rl.grpo import (
  GRPOConfig,
  group_advantages,
  grpo_loss,
  maybe_update_reference,
)
from jaxexit.train.progress import ProgressBar
from jaxexit.typing import Array, PRNGKeyArray, PyTree


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """What distinguishes one compared method (module docstring)."""

  uses_buffer: bool
  expand: bool
  divergence: bool
  diversity_bonus: bool


METHODS = {
  "base": None,  # the warm start itself: no RL
  "grpo": MethodSpec(False, False, False, False),
  "curriculum": MethodSpec(True, False, False, False),
  "improve": MethodSpec(True, True, False, False),
  "diverge": MethodSpec(True, True, True, False),
  "exit": MethodSpec(True, True, True, True),
}
SCORE_ON = ("reward", "quality")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExItConfig:
  """Settings of one RL run (spec §5, §11.5 defaults for the toy).

  Attributes:
    method: a key of `METHODS` other than "base".
    iterations: training iterations.
    prompts: P starts per iteration.
    grpo: G, epochs, clip, KL and reference updates.
    learning_rate: Adam learning rate.
    buffer: capacity N, B_min, replay probability p, κ, dedupe, score_norm.
    p_div: probability of a divergence step (methods with divergence).
    improve_reward: "quality" or "normalized_delta" (§3.6).
    score_on: learnability over the training "reward" or the raw
      "quality" (§3.4).
    temperature: rollout sampling temperature.
  """

  method: str
  iterations: int = 200
  prompts: int = 64
  grpo: GRPOConfig = GRPOConfig()
  learning_rate: float = 1e-4
  buffer: BufferConfig = BufferConfig()
  p_div: float = 0.2
  improve_reward: str = "quality"
  score_on: str = "reward"
  temperature: float = 1.0

  def __post_init__(self):
    checks.one_of(
      "ExItConfig.method",
      self.method,
      [m for m in METHODS if METHODS[m] is not None],
    )
    checks.positive_int("ExItConfig.iterations", self.iterations)
    checks.positive_int("ExItConfig.prompts", self.prompts)
    checks.in_range(
      "ExItConfig.learning_rate", self.learning_rate, 0, 1, low_open=True
    )
    checks.in_range("ExItConfig.p_div", self.p_div, 0.0, 1.0)
    checks.one_of(
      "ExItConfig.improve_reward", self.improve_reward, IMPROVE_REWARDS
    )
    checks.one_of("ExItConfig.score_on", self.score_on, SCORE_ON)
    checks.in_range(
      "ExItConfig.temperature", self.temperature, 0, float("inf"), low_open=True
    )

  @property
  def spec(self) -> MethodSpec:
    return METHODS[self.method]


class Item(NamedTuple):
  """A buffer entry: a task and its latest iterate (blank for base tasks).

  Attributes:
    task: the domain's task.
    prev: [A] the previous answer.
    prev_quality: its quality (0 for a blank answer).
  """

  task: PyTree
  prev: Array
  prev_quality: Array


class TrainState(NamedTuple):
  """Everything one seed's run carries between iterations."""

  params: nnx.State
  opt_state: optax.OptState
  ref_params: nnx.State
  buffer: TaskBuffer
  step: Array


def _optimizer(cfg: ExItConfig) -> optax.GradientTransformation:
  return optax.adam(cfg.learning_rate)


def fresh_items(domain: Domain, key: PRNGKeyArray, n: int) -> Item:
  """`n` fresh base tasks as buffer items."""
  tasks = domain.sample_tasks(key, n)
  return Item(
    task=tasks,
    prev=domain.blank_answer(tasks),
    prev_quality=jnp.zeros((n,), jnp.float32),
  )


def init_state(
  domain: Domain, cfg: ExItConfig, params: nnx.State
) -> TrainState:
  """The state at iteration 0 from warm-started `params` (one seed)."""
  example = jax.tree.map(
    lambda x: x[0], fresh_items(domain, jax.random.key(0), 1)
  )
  return TrainState(
    params=params,
    opt_state=_optimizer(cfg).init(params),
    ref_params=params,
    buffer=init_buffer(cfg.buffer, example),
    step=jnp.zeros((), jnp.int32),
  )


def step_rewards(cfg: ExItConfig, mode, quality, prev_quality):
  """The training reward of each rollout (§3.6): r_imp on improvement steps
  under "normalized_delta", else the new answer's quality."""
  improved = improvement_reward(quality, prev_quality, cfg.improve_reward)
  return jnp.where(mode == MODE_IMPROVE, improved, quality)


def train_iteration(
  graphdef: nnx.GraphDef,
  state: TrainState,
  key: PRNGKeyArray,
  *,
  domain: Domain,
  cfg: ExItConfig,
) -> tuple[TrainState, dict[str, Array]]:
  """One ExIt / GRPO iteration (module docstring); traceable, one seed."""
  spec, p, g = cfg.spec, cfg.prompts, cfg.grpo.num_generations
  k_task, k_start, k_sample = jax.random.split(key, 3)
  starts = select_starts(
    k_start,
    state.buffer,
    cfg.buffer,
    fresh_items(domain, k_task, p),
    cfg.p_div if spec.divergence else 0.0,
    allow_replay=spec.uses_buffer,
  )
  items = jax.tree.map(lambda x: jnp.repeat(x, g, axis=0), starts.items)
  mode = jnp.repeat(starts.mode, g)
  task, prev = items.task, items.prev

  response, logp_old = sample_responses(
    nnx.merge(graphdef, state.params),
    domain,
    task,
    prev,
    mode,
    k_sample,
    cfg.temperature,
  )
  answer = domain.apply_response(task, prev, mode, response)
  quality = domain.quality(task, answer)  # [N]
  reward = step_rewards(cfg, mode, quality, items.prev_quality)
  adv = group_advantages(reward.reshape(p, g), scale=cfg.grpo.scale_rewards)
  if spec.diversity_bonus:
    adv = adv * diversity_coefficients(domain.embed(answer).reshape(p, g, -1))
  mask = jnp.ones(response.shape, jnp.float32)
  logp_ref = None
  if cfg.grpo.beta > 0:
    logp_ref = response_logprobs(
      nnx.merge(graphdef, state.ref_params), domain, task, prev, mode, response
    )

  def loss_fn(params):
    logp = response_logprobs(
      nnx.merge(graphdef, params), domain, task, prev, mode, response
    )
    return grpo_loss(
      logp,
      logp_old,
      adv.reshape(-1),
      mask,
      logp_ref=logp_ref,
      clip_eps=cfg.grpo.clip_eps,
      beta=cfg.grpo.beta,
      agg=cfg.grpo.loss_agg,
    )

  tx = _optimizer(cfg)

  def epoch(carry, _):
    params, opt_state = carry
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), (loss, aux)

  (params, opt_state), (loss, aux) = jax.lax.scan(
    epoch, (state.params, state.opt_state), length=cfg.grpo.epochs
  )

  scored = reward if cfg.score_on == "reward" else quality
  learnability = group_learnability(scored.reshape(p, g))  # [P]
  buffer = state.buffer
  if spec.uses_buffer:
    expand = None
    if spec.expand:
      children = (answer.reshape(p, g, -1), quality.reshape(p, g))
      expand = functools.partial(
        expand_children,
        lambda item, child: Item(
          task=item.task, prev=child[0], prev_quality=child[1]
        ),
        starts,
        children,
        learnability,
      )
    buffer = update_buffer(
      buffer,
      starts,
      learnability,
      state.step,
      dedupe=cfg.buffer.dedupe,
      expand=expand,
    )
  ref_params = maybe_update_reference(
    state.ref_params,
    params,
    state.step + 1,
    cfg.grpo.ref_update_every,
    cfg.grpo.ref_alpha,
  )

  replayed = starts.from_buffer
  n_replayed = jnp.maximum(replayed.sum(), 1)
  start_age = state.buffer.inserted_at[jnp.maximum(starts.buffer_idx, 0)]
  metrics = {
    "reward": reward.mean(),
    "quality": quality.mean(),
    "success": domain.success(task, answer).mean(),
    "learnability": learnability.mean(),
    "replay_fraction": replayed.mean(),
    "sampled_depth": starts.depth.mean(),
    "replayed_start_quality": jnp.sum(
      jnp.where(replayed, starts.items.prev_quality, 0)
    )
    / n_replayed,
    "sample_from_iteration": jnp.sum(jnp.where(replayed, start_age, 0))
    / n_replayed,
    "divergence_fraction": (starts.mode == MODE_DIVERGE).mean(),
    "buffer_size": buffer_size(buffer),
    "loss": loss[-1],
    "clip_fraction": aux["clip_fraction"].mean(),
    "approx_kl": aux["approx_kl"].mean(),
    "rollouts": jnp.int32(p * g),
    "updates": jnp.int32(cfg.grpo.epochs),
  }
  return TrainState(
    params=params,
    opt_state=opt_state,
    ref_params=ref_params,
    buffer=buffer,
    step=state.step + 1,
  ), metrics


@functools.partial(
  jax.jit, static_argnames=("graphdef", "domain", "cfg", "num_steps")
)
def _chunk(graphdef, states, keys, start, *, domain, cfg, num_steps):
  def run(state, key):
    def body(state, i):
      return train_iteration(
        graphdef, state, jax.random.fold_in(key, i), domain=domain, cfg=cfg
      )

    return jax.lax.scan(body, state, start + jnp.arange(num_steps))

  return jax.vmap(run)(states, keys)


@functools.partial(jax.jit, static_argnames=("domain", "cfg"))
def _init_states(params, *, domain, cfg):
  return jax.vmap(lambda p: init_state(domain, cfg, p))(params)


@functools.partial(jax.jit, static_argnames=("kappa", "score_norm"))
def _final_stats(buffers, steps, *, kappa, score_norm):
  return jax.vmap(
    lambda b, s: buffer_stats(b, s, kappa=kappa, score_norm=score_norm)
  )(buffers, steps)


def train(
  graphdef: nnx.GraphDef,
  params: nnx.State,
  keys: Key[Array, "S"],
  *,
  domain: Domain,
  cfg: ExItConfig,
  chunks: int = 10,
  progress: bool | None = None,
) -> tuple[nnx.State, dict[str, Array], dict[str, Array]]:
  """Trains S seeds together from their warm-started policies.

  Args:
    graphdef: the policy graphdef (`policy.policy_graphdef`).
    params: warm-started policy parameters with a leading [S] seed axis.
    keys: [S] typed keys (one per seed).
    domain: the domain (static).
    cfg: the run's settings.
    chunks: jitted scans the iterations are split into (progress
      updates); the result does not depend on it.
    progress: show a progress bar (None: only on a terminal).

  Returns:
    (params [S, ...], per-iteration metrics {name: [S, I]}, final buffer
    statistics {name: [S, ...]}).
  """
  checks.positive_int("chunks", chunks)
  if keys.ndim != 1:
    raise ValueError(f"keys must have shape [S]; got {keys.shape}")
  num_seeds = keys.shape[0]
  for leaf in jax.tree.leaves(params):
    if leaf.shape[:1] != (num_seeds,):
      raise ValueError(
        f"params leaves need a leading seed axis of "
        f"{num_seeds}; got a leaf of shape {leaf.shape}"
      )
  states = _init_states(params, domain=domain, cfg=cfg)
  bounds = [cfg.iterations * c // chunks for c in range(chunks + 1)]
  logs = []
  with ProgressBar(cfg.iterations, enabled=progress, desc=cfg.method) as bar:
    for lo, hi in zip(bounds[:-1], bounds[1:]):
      if hi == lo:
        continue
      states, metrics = _chunk(
        graphdef,
        states,
        keys,
        jnp.int32(lo),
        domain=domain,
        cfg=cfg,
        num_steps=hi - lo,
      )
      logs.append(metrics)
      bar.update(
        hi - lo,
        {k: metrics[k][:, -1].mean() for k in ("quality", "sampled_depth")},
      )
  metrics = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=1), *logs)
  stats = _final_stats(
    states.buffer,
    states.step,
    kappa=cfg.buffer.kappa,
    score_norm=cfg.buffer.score_norm,
  )
  return states.params, metrics, stats


def seed_keys(seeds: int | list[int]) -> Key[Array, "S"]:
  """[S] keys for `seeds` (a count means seeds 0..count-1)."""
  seeds = range(seeds) if isinstance(seeds, int) else seeds
  return jnp.stack([jax.random.key(s) for s in seeds])
