"""The validation policy of `jaxexit.exits` (see `jaxexit/checks.py`).

Every public exit function gets NaN, ±inf and out-of-range values, eagerly
(a ValueError naming the argument) and under `jit` with debug checks on (a
checkify error naming it). Debug checks off, a jitted call is not checked.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import jaxexit
from jaxexit import exits
from jaxexit.exits.outputs import ExitHeadOutput

NAN, INF = float("nan"), float("inf")
LAM = jnp.array([[0.2, 0.3, 0.4, 0.5], [0.1, 0.1, 0.1, 0.1]])
LOGITS = jnp.array([[[2.0, 0.0], [0.0, 1.0]], [[0.5, 0.5], [3.0, -1.0]]])


def _set(x, value):
  return x.at[(0,) * x.ndim].set(value)


# (name, function of one array, a valid input, bad values, message regex)
CASES = [
  (
    "halting_distribution",
    exits.halting_distribution,
    LAM,
    (1.5, -0.5, NAN, INF),
    r"lambdas must hold probabilities in \[0, 1\]",
  ),
  (
    "q_exit",
    lambda p: exits.q_exit(p, 0.5),
    LAM,
    (NAN, INF, -INF, 1.5),
    r"p must hold probabilities",
  ),
  (
    "kl_divergence(p)",
    lambda p: exits.kl_divergence(p, LAM),
    LAM,
    (NAN, 1.5),
    r"p must hold probabilities",
  ),
  (
    "kl_divergence(q)",
    lambda q: exits.kl_divergence(LAM, q),
    LAM,
    (NAN, -0.1),
    r"q must hold probabilities",
  ),
  (
    "ponder_kl",
    lambda p: exits.ponder_kl(p, LAM[0]),
    LAM,
    (NAN,),
    r"must hold probabilities",
  ),
  (
    "epsilon_floor",
    exits.epsilon_floor,
    LAM,
    (NAN, 2.0),
    r"p must hold probabilities",
  ),
  (
    "learned_exit",
    lambda s: exits.learned_exit(s, 0.5),
    LAM,
    (NAN, -1.0),
    r"scores must hold probabilities",
  ),
  ("jei_exit", exits.jei_exit, LAM, (NAN, 1.5), r"g must hold probabilities"),
  (
    "sampled_exit",
    lambda lam: exits.sampled_exit(jax.random.key(0), lam),
    LAM,
    (NAN, 1.5),
    r"lambdas must hold probabilities",
  ),
  (
    "ponder_task_loss(loss)",
    lambda loss: exits.ponder_task_loss(loss, LAM),
    LAM * 3,
    (NAN, INF),
    r"per_layer_loss must be finite",
  ),
  (
    "entropy",
    exits.entropy,
    LOGITS,
    (NAN, INF),
    r"logits must not hold NaN or \+inf",
  ),
  (
    "max_softmax",
    exits.max_softmax,
    LOGITS,
    (NAN, INF),
    r"logits must not hold NaN or \+inf",
  ),
  (
    "entropy_exit",
    lambda z: exits.entropy_exit(z, 0.3),
    LOGITS,
    (NAN,),
    r"logits must not hold NaN",
  ),
  (
    "max_softmax_exit",
    lambda z: exits.max_softmax_exit(z, 0.9),
    LOGITS,
    (NAN,),
    r"logits must not hold NaN",
  ),
]
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("name,fn,good,bads,message", CASES, ids=IDS)
def test_eager_bad_values_raise_naming_the_argument(
  name, fn, good, bads, message
):
  del name
  fn(good)  # the valid input passes
  for bad in bads:
    with pytest.raises(ValueError, match=message) as info:
      fn(_set(good, bad))
    # The first bad value and its index are named.
    assert "index (0, 0" in str(info.value)


@pytest.mark.parametrize("name,fn,good,bads,message", CASES, ids=IDS)
def test_jit_with_debug_checks_finds_the_bad_value(
  name, fn, good, bads, message
):
  del name
  with jaxexit.debug_checks(True):
    run = jaxexit.checked(jax.jit(fn))
    run(good)
    with pytest.raises(checkify.JaxRuntimeError, match=message):
      run(_set(good, bads[0]))


def test_jit_without_debug_checks_skips_value_checks():
  assert not jaxexit.debug_checks()
  out = jax.jit(exits.halting_distribution)(_set(LAM, 1.5))
  assert out.shape == LAM.shape  # unchecked: the documented trade-off


def test_debug_checks_flag_restores_and_retraces():
  assert jaxexit.debug_checks() is False
  f = jax.jit(exits.q_exit)
  f(LAM, 0.5)
  with jaxexit.debug_checks(True):
    assert jaxexit.debug_checks() is True
    with pytest.raises(checkify.JaxRuntimeError, match="p must hold"):
      jaxexit.checked(f)(_set(LAM, NAN), 0.5)
  assert jaxexit.debug_checks() is False
  # Traced again without the checks: no "not functionalized" error.
  assert f(_set(LAM, NAN), 0.5).shape == (2,)


def test_documented_examples_of_the_issue():
  with pytest.raises(ValueError, match=r"first 1\.5"):
    exits.halting_distribution(jnp.array([[1.5, -0.5, 0.2, 0.3]]))
  with pytest.raises(ValueError, match="nan"):
    exits.kl_divergence(jnp.array([[0.5, NAN]]), jnp.array([0.5, 0.5]))


def test_entropy_allows_masked_classes():
  z = jnp.array([[0.0, -INF], [0.0, 0.0], [1.0, 1.0]])
  z3 = jnp.concatenate([z, jnp.array([[-INF], [-INF], [1.0]])], axis=-1)
  np.testing.assert_allclose(
    exits.entropy(z3), [0.0, np.log(2), np.log(3)], atol=1e-6
  )
  grads = jax.grad(lambda x: exits.entropy(x).sum())(z3)
  assert np.isfinite(np.asarray(grads)[np.isfinite(np.asarray(z3))]).all()
  np.testing.assert_allclose(
    exits.max_softmax(z3), [1.0, 0.5, 1 / 3], rtol=1e-6
  )
  with pytest.raises(ValueError, match="-inf for every class"):
    exits.entropy(jnp.array([[-INF, -INF]]))


def test_rules_check_head_outputs_under_debug_checks():
  rule = exits.q_exit_rule(0.5)
  bad = ExitHeadOutput(halt=jnp.array([0.2, NAN]))
  with pytest.raises(ValueError, match=r"head_out\.halt must hold prob"):
    rule.update(rule.init(2), bad, 0)

  def step(halt):
    return rule.update(rule.init(2), ExitHeadOutput(halt=halt), 0)[1]

  with jaxexit.debug_checks(True):
    with pytest.raises(checkify.JaxRuntimeError, match=r"head_out\.halt"):
      jaxexit.checked(jax.jit(step))(jnp.array([0.2, NAN]))
