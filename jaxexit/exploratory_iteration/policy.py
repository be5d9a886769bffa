"""The ExIt toy policy: a tiny `LlamaLM` and its masked sampler.

Spec `exploratory_iteration.md` §11.5 (d = 64, 2 layers, 4 heads). Deviation
from the
pilot: the policy is the project's Llama decoder, so positions are RoPE,
not learned embeddings, and the MLP is SwiGLU (width 172 ≈ 8/3·d keeps the
pilot's ~0.1M parameters).

`sample_responses` prefills the domain's prompt, then decodes the R response
tokens in one `lax.scan` over the KV cache (as `jaxexit.decoding.full`),
masking each step with the domain's `step_mask` and drawing with the
decoding engine's `sample` (temperature 0 is greedy). `response_logprobs`
scores a given response with one teacher-forced forward pass and the same
masks; both report log π(token) under the *masked temperature-1* policy,
which is what GRPO's ratios need whatever temperature sampled the tokens.

Both take the model as an `nnx.Module` and are pure (no NNX state is
mutated), so they are traced, not jitted, here: the caller jits, and under
`jax.vmap` over seeds or `jax.grad` it passes `(graphdef, params)` through
the transform and calls `nnx.merge(graphdef, params)` at the top of the
traced function (the repo's functional style, STYLE rule 1).

Axes: B tasks, P prompt tokens, R response tokens, V vocabulary.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import DTypeLike

from jaxexit import checks
from jaxexit.decoding.engine import cache_length, sample
from jaxexit.exploratory_iteration.domains.base import Domain
from jaxexit.models.llama import LlamaConfig, LlamaLM
from jaxexit.nn.functional import NEG_INF
from jaxexit.train.lm import backbone_logits
from jaxexit.typing import Array, Float, Int, PRNGKeyArray, PyTree


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolicyConfig:
  """Sizes of the toy policy (the vocabulary and length come from the
  domain).

  Attributes:
    d_model: D.
    num_layers: L.
    num_heads: H.
    mlp_hidden: F (SwiGLU width).
    dtype: compute dtype (logits and log-probabilities are float32).
  """

  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  mlp_hidden: int = 172
  dtype: DTypeLike = jnp.float32

  def __post_init__(self):
    for name in ("d_model", "num_layers", "num_heads", "mlp_hidden"):
      checks.positive_int(f"PolicyConfig.{name}", getattr(self, name))

  def llama_config(self, domain: Domain) -> LlamaConfig:
    """The `LlamaConfig` of this policy on `domain`."""
    return LlamaConfig(
      vocab_size=domain.vocab_size,
      d_model=self.d_model,
      num_layers=self.num_layers,
      num_heads=self.num_heads,
      mlp_hidden=self.mlp_hidden,
      max_position=domain.prompt_len + domain.response_len,
      dtype=self.dtype,
    )


def make_policy(domain: Domain, cfg: PolicyConfig, rngs: nnx.Rngs) -> LlamaLM:
  """A freshly initialised policy for `domain`."""
  return LlamaLM(cfg.llama_config(domain), rngs=rngs)


def policy_graphdef(domain: Domain, cfg: PolicyConfig) -> nnx.GraphDef:
  """The graphdef every policy of (`domain`, `cfg`) shares (no
  initialisation is run)."""
  graphdef, _ = nnx.split(
    nnx.eval_shape(lambda: make_policy(domain, cfg, nnx.Rngs(0)))
  )
  return graphdef


def _forward(model: LlamaLM, tokens, positions, valid, caches):
  h = model.embed(tokens)
  caches = list(caches)
  for i in range(model.num_layers):
    h, caches[i] = model.layer(i, h, caches[i], positions, valid)
  return model.lm_head(model.final_norm(h)), tuple(caches)


def _masked_logp(logits: Float[Array, "*B V"], allowed) -> Array:
  return jax.nn.log_softmax(jnp.where(allowed, logits, NEG_INF), axis=-1)


def sample_responses(
  model: LlamaLM,
  domain: Domain,
  tasks: PyTree,
  prev: Int[Array, "B A"],
  mode: Int[Array, "B"],
  key: PRNGKeyArray,
  temperature: float,
) -> tuple[Int[Array, "B R"], Float[Array, "B R"]]:
  """Samples one masked response per task with the KV cache.

  Args:
    model: the policy (see module docstring for use under transforms).
    domain: the domain (static).
    tasks: task pytree, leading axis B.
    prev: previous answers (ignored where `mode` is MODE_BASE).
    mode: MODE_BASE / MODE_IMPROVE / MODE_DIVERGE per task.
    key: sampling key (step t draws with `fold_in(key, t)`).
    temperature: Python float; 0 is greedy argmax.

  Returns:
    (response [B, R] int32, logp [B, R] float32 log-probabilities of the
    tokens under the masked temperature-1 policy).
  """
  checks.in_range("temperature", temperature, 0, float("inf"))
  prompt = domain.build_prompt(tasks, prev, mode)
  b, p = prompt.shape
  r = domain.response_len
  caches = model.init_cache(b, cache_length(p, r))
  positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
  logits, caches = _forward(
    model, prompt, positions, jnp.ones((b, p), bool), caches
  )
  valid = jnp.ones((b, 1), bool)

  def step(carry, t):
    logits, caches, response = carry
    allowed = domain.step_mask(tasks, prev, mode, response, t)
    masked = jnp.where(allowed, logits, NEG_INF)
    token = sample(masked, temperature, jax.random.fold_in(key, t))
    logp = jnp.take_along_axis(
      _masked_logp(logits, allowed), token[:, None], axis=1
    )[:, 0]
    response = response.at[:, t].set(token)
    # The last step's forward pass is skipped: nothing reads its logits.
    logits, caches = jax.lax.cond(
      t + 1 < r,
      lambda: _next_logits(model, token, p + t, valid, caches),
      lambda: (logits, caches),
    )
    return (logits, caches, response), logp

  init = (logits[:, -1], caches, jnp.zeros((b, r), jnp.int32))
  (_, _, response), logp = jax.lax.scan(
    step, init, jnp.arange(r, dtype=jnp.int32)
  )
  return response, logp.T


def _next_logits(model, token, position, valid, caches):
  positions = jnp.full(token.shape, position, jnp.int32)[:, None]
  logits, caches = _forward(model, token[:, None], positions, valid, caches)
  return logits[:, 0], caches


def response_logprobs(
  model: LlamaLM,
  domain: Domain,
  tasks: PyTree,
  prev: Int[Array, "B A"],
  mode: Int[Array, "B"],
  response: Int[Array, "B R"],
) -> Float[Array, "B R"]:
  """log π(response token) under the masked temperature-1 policy, from one
  teacher-forced forward pass over prompt + response (equals the sampler's
  `logp` up to float rounding).

  Args:
    model, domain, tasks, prev, mode: as `sample_responses`.
    response: [B, R] tokens valid under the domain's step masks.

  Returns:
    [B, R] float32.
  """
  prompt = domain.build_prompt(tasks, prev, mode)
  p = prompt.shape[1]
  tokens = jnp.concatenate([prompt, response[:, :-1]], axis=1)
  logits = backbone_logits(model, tokens)[:, p - 1 :]  # [B, R, V]
  masks = domain.response_masks(tasks, prev, mode, response)
  logp = _masked_logp(logits, masks)
  return jnp.take_along_axis(logp, response[..., None], axis=2)[..., 0]
