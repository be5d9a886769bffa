"""K-step inference-time self-improvement (`exploratory_iteration.md` §3.9).

Step 0 answers each task from its base prompt; every step k >= 1 asks the
policy to improve its latest answer (improve prompt, no external feedback).
Each task is played `num_samples` times independently (avg@num_samples).
Net corrections at step k count, over tasks and samples, the answers that
went from failed at step 0 to successful at step k minus those that went the
other way (the telescoped sum of per-step incorrect→correct minus
correct→incorrect, paper Fig. 4).

The whole curve is one `lax.scan` over k inside one `jit`; at temperature 0
the result is bit-exact deterministic.

Axes: K1 = K + 1 steps (0..K), S samples, B tasks, A answer length.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxexit import checks
from jaxexit.exploratory_iteration.domains.base import (
  MODE_BASE,
  MODE_IMPROVE,
  Domain,
)
from jaxexit.exploratory_iteration.policy import sample_responses
from jaxexit.typing import Array, PRNGKeyArray, PyTree


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KStepResult:
  """A K-step self-improvement curve.

  Attributes:
    quality: [K1] float32 mean quality at each step.
    success: [K1] float32 success rate at each step.
    net_corrections: [K1] int32 (failed at 0, solved at k) minus (solved
      at 0, failed at k), summed over tasks and samples; 0 at k = 0.
    sample_quality: [K1, S, B] float32 per-sample quality.
    sample_success: [K1, S, B] bool per-sample success.
  """

  quality: Array
  success: Array
  net_corrections: Array
  sample_quality: Array
  sample_success: Array


def k_step(
  model,
  domain: Domain,
  tasks: PyTree,
  *,
  K: int,
  num_samples: int,
  temperature: float,
  key: PRNGKeyArray,
) -> KStepResult:
  """The traceable K-step evaluation (call inside `jit`/`vmap`; see
  `k_step_eval` for the jitted entry point).

  Args:
    model: the policy (`LlamaLM`), merged inside the caller's trace.
    domain: the domain (static).
    tasks: B base tasks.
    K: self-improvement steps after the initial answer.
    num_samples: S independent chains per task.
    temperature: sampling temperature (0: greedy).
    key: step k samples with `fold_in(key, k)`.

  Returns:
    The curve over k = 0..K.
  """
  checks.positive_int("K", K, minimum=0)
  checks.positive_int("num_samples", num_samples)
  b = domain.num_tasks(tasks)
  reps = jax.tree.map(
    lambda x: jnp.tile(x, (num_samples,) + (1,) * (x.ndim - 1)), tasks
  )
  n = b * num_samples

  def attempt(prev, k):
    # Step 0 is the base prompt (its prev shows as BLANK), then improve.
    mode = jnp.full((n,), jnp.where(k == 0, MODE_BASE, MODE_IMPROVE), jnp.int32)
    response, _ = sample_responses(
      model, domain, reps, prev, mode, jax.random.fold_in(key, k), temperature
    )
    answer = domain.apply_response(reps, prev, mode, response)
    return answer, (domain.quality(reps, answer), domain.success(reps, answer))

  _, (q, s) = jax.lax.scan(
    attempt, domain.blank_answer(reps), jnp.arange(K + 1)
  )
  q = q.reshape(K + 1, num_samples, b)
  s = s.reshape(K + 1, num_samples, b)
  fixed = jnp.sum(s & ~s[:1], axis=(1, 2), dtype=jnp.int32)
  broken = jnp.sum(~s & s[:1], axis=(1, 2), dtype=jnp.int32)
  return KStepResult(
    quality=jnp.mean(q, axis=(1, 2)),
    success=jnp.mean(s, axis=(1, 2), dtype=jnp.float32),
    net_corrections=fixed - broken,
    sample_quality=q,
    sample_success=s,
  )


@functools.partial(
  jax.jit,
  static_argnames=("graphdef", "domain", "K", "num_samples", "temperature"),
)
def _k_step_jit(
  graphdef, params, tasks, key, *, domain, K, num_samples, temperature
):
  return k_step(
    nnx.merge(graphdef, params),
    domain,
    tasks,
    K=K,
    num_samples=num_samples,
    temperature=temperature,
    key=key,
  )


def k_step_eval(
  model,
  domain: Domain,
  tasks: PyTree,
  *,
  K: int,
  num_samples: int,
  temperature: float,
  key: PRNGKeyArray | None = None,
) -> KStepResult:
  """Jitted `k_step` (compiled once per graphdef, domain and sizes).

  Args:
    model: the policy (`LlamaLM`); it is split here.
    domain, tasks, K, num_samples, temperature: as `k_step`.
    key: sampling key (default `jax.random.key(0)`).
  """
  checks.positive_int("K", K, minimum=0)
  checks.positive_int("num_samples", num_samples)
  checks.in_range("temperature", temperature, 0, float("inf"))
  graphdef, params = nnx.split(model)
  key = jax.random.key(0) if key is None else key
  return _k_step_jit(
    graphdef,
    params,
    tasks,
    key,
    domain=domain,
    K=K,
    num_samples=num_samples,
    temperature=float(temperature),
  )
