"""K-step evaluation of every seed's policy at once (vmapped over seeds)."""

import functools

import jax
from flax import nnx

from experiments.cli import to_host
from jaxexit.exploratory_iteration.k_step import k_step

DECODINGS = {"sample": 1.0, "greedy": 0.0}


@functools.partial(
  jax.jit,
  static_argnames=("graphdef", "domain", "K", "num_samples", "temperature"),
)
def _k_step_seeds(
  graphdef, params, tasks, keys, *, domain, K, num_samples, temperature
):
  def one(p, key):
    result = k_step(
      nnx.merge(graphdef, p),
      domain,
      tasks,
      K=K,
      num_samples=num_samples,
      temperature=temperature,
      key=key,
    )
    return result.quality, result.success, result.net_corrections

  return jax.vmap(one)(params, keys)


def k_step_records(
  graphdef,
  params,
  tasks,
  keys,
  *,
  domain,
  method: str,
  seeds,
  K: int,
  num_samples: int,
) -> list[dict]:
  """One record per (seed, decoding, k): quality, success, net corrections.

  Args:
    graphdef, params: the policy; params have a leading [S] seed axis.
    tasks: held-out base tasks (shared by every seed and method).
    keys: [S] sampling keys.
    domain: the domain.
    method: its name in the records.
    seeds: the S seed numbers.
    K: improvement steps after the first answer.
    num_samples: chains per task at temperature 1 (greedy uses one).
  """
  records = []
  for decoding, temperature in DECODINGS.items():
    q, s, net = _k_step_seeds(
      graphdef,
      params,
      tasks,
      keys,
      domain=domain,
      K=K,
      num_samples=num_samples if temperature else 1,
      temperature=temperature,
    )
    q, s, net = to_host((q, s, net))  # seeds may be split over processes
    for i, seed in enumerate(seeds):
      for k in range(K + 1):
        records.append(
          {
            "domain": domain.name,
            "method": method,
            "seed": int(seed),
            "decoding": decoding,
            "k": k,
            "quality": float(q[i, k]),
            "success": float(s[i, k]),
            "net_corrections": int(net[i, k]),
          }
        )
  return records
