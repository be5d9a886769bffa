"""Tests for jaxexit.exits.gates (BERxiT LTE, JEI-DNN gates)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxexit.exits import gates
from jaxexit.exits.outputs import ExitHeadOutput
from tests.jaxexit.exits.rule_driver import drive, unchecked
from tests.tiers import slow

B, L = 16, 5


def _unit(seed=0, shape=(B, L)):
  return jax.random.uniform(jax.random.key(seed), shape, jnp.float32)


def test_lte_targets_classification_and_regression():
  z = jnp.array([[[2.0, 0.0], [0.0, 2.0], [0.0, 2.0]]])  # preds 0, 1, 1
  np.testing.assert_allclose(
    gates.lte_targets(z, jnp.array([1])), [[1.0, 0.0, 0.0]]
  )
  f = jnp.array([[0.5, 1.0, 3.0]])
  y = jnp.array([1.0])
  want = np.tanh(np.abs([0.5 - 1.0, 0.0, 2.0]))[None]
  np.testing.assert_allclose(
    gates.lte_targets(f, y, regression=True), want, rtol=1e-6
  )
  np.testing.assert_allclose(
    gates.lte_targets(f[..., None], y, regression=True), want, rtol=1e-6
  )
  grad = jax.grad(lambda x: gates.lte_targets(x, y, regression=True).sum())(f)
  np.testing.assert_allclose(grad, 0.0)


def test_learned_exit_hand_example():
  u = jnp.array([[0.9, 0.4, 0.1], [0.9, 0.9, 0.9]])
  assert gates.learned_exit(u, 0.5).tolist() == [1, 2]
  assert gates.learned_exit(u, 0.2).tolist() == [2, 2]
  assert gates.learned_exit(u, 0.0).tolist() == [2, 2]
  assert gates.learned_exit(u, 1.0).tolist() == [0, 0]


def test_jei_exit_probabilities_hand_example():
  g = jnp.array([[0.3, 0.5, 0.6, 0.9]])
  p, c = gates.jei_exit_probabilities(g)
  # Σ_{j<l} g_j = 0, .3, .8, 1.4 → P = .3, .5, .2, 0.
  np.testing.assert_allclose(p, [[0.3, 0.5, 0.2, 0.0]], atol=1e-6)
  # c = .3, .5/.7, .2/.2 = 1, then survival 0 → 0 (guarded).
  np.testing.assert_allclose(c, [[0.3, 0.5 / 0.7, 1.0, 0.0]], rtol=1e-5)
  assert gates.jei_exit(g).tolist() == [1]
  assert gates.jei_exit(g, 0.9).tolist() == [2]


def test_jei_probabilities_properties_and_sum_p_form():
  g = _unit(shape=(64, L))
  p, c = gates.jei_exit_probabilities(g)
  pn, gn = np.asarray(p), np.asarray(g, np.float64)
  assert np.all(pn >= 0) and np.all(np.asarray(c) >= 0)
  assert np.all(np.asarray(c) <= 1) and np.all(pn.sum(-1) <= 1 + 1e-6)
  # Truncating with Σ_{j<l} P_j gives the same P as the official Σ_{j<l} g_j.
  p_alt = np.zeros_like(gn)
  for l in range(L):
    p_alt[:, l] = np.maximum(0, np.minimum(gn[:, l], 1 - p_alt[:, :l].sum(-1)))
  np.testing.assert_allclose(pn, p_alt, atol=1e-6)
  # Without clipping, Π_{j<l}(1 − c_j) = 1 − Σ_{j<l} P_j.
  surv = 1 - np.concatenate([np.zeros((64, 1)), np.cumsum(pn, -1)[:, :-1]], -1)
  ok = surv > 1e-3
  want_c = pn / np.where(ok, surv, 1)
  np.testing.assert_allclose(
    np.asarray(c)[ok], want_c[ok], rtol=1e-3, atol=1e-5
  )


def test_jei_grads_finite():
  g = _unit().at[:, 0].set(1.0)  # survival hits 0 after the first gate
  grad = jax.grad(
    lambda x: jnp.sum(
      jnp.stack(gates.jei_exit_probabilities(x)) * jnp.arange(L)[None, None]
    )
  )(g)
  assert np.all(np.isfinite(np.asarray(grad)))


def test_jit_equals_no_jit():
  g = _unit()
  np.testing.assert_array_equal(jax.jit(gates.jei_exit)(g), gates.jei_exit(g))
  p, c = gates.jei_exit_probabilities(g)
  pj, cj = jax.jit(gates.jei_exit_probabilities)(g)
  np.testing.assert_allclose(pj, p, rtol=1e-6)
  np.testing.assert_allclose(cj, c, rtol=1e-6)
  np.testing.assert_array_equal(
    jax.jit(gates.learned_exit)(g, 0.3), gates.learned_exit(g, 0.3)
  )


@slow
def test_jei_exit_batch_dims_and_vmap():
  g = _unit(shape=(2, 3, L))
  np.testing.assert_array_equal(
    gates.jei_exit(g), gates.jei_exit(g.reshape(6, L)).reshape(2, 3)
  )
  np.testing.assert_array_equal(jax.vmap(gates.jei_exit)(g), gates.jei_exit(g))


def test_jei_oracle_exit_and_targets():
  ce = jnp.array([[2.0, 1.0, 0.1], [0.5, 0.5, 0.5]])
  costs = jnp.array([0.2, 0.5, 1.0])
  # γ = 1: [2.2, 1.5, 1.1] → 2; [0.7, 1.0, 1.5] → 0.
  assert gates.jei_oracle_exit(ce, costs, 1.0).tolist() == [2, 0]
  # γ = 0: ties go to the earliest exit.
  assert gates.jei_oracle_exit(ce, costs, 0.0).tolist() == [2, 0]
  assert gates.jei_oracle_exit(ce, costs, 10.0).tolist() == [0, 0]
  np.testing.assert_array_equal(
    gates.jei_gate_targets(jnp.array([0, 2, 3]), 4),
    [[1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]],
  )


@pytest.mark.parametrize("case", ["random", "never", "always"])
@pytest.mark.parametrize("threshold", [0.2, 0.6])
def test_learned_exit_rule_matches_vectorised(case, threshold):
  u = _unit(seed=1)
  u = {"random": u, "never": jnp.ones_like(u), "always": u * 0.1}[case]
  want = gates.learned_exit(u, threshold)
  got = drive(gates.learned_exit_rule(threshold), ExitHeadOutput(score=u))
  np.testing.assert_array_equal(got, want)
  if case != "random":
    assert got.tolist() == [L - 1 if case == "never" else 0] * B


@pytest.mark.parametrize("case", ["random", "never", "always"])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.8])
def test_jei_gate_rule_matches_vectorised(case, threshold):
  g = _unit(seed=2) * 0.7
  if case == "never":
    g = jnp.zeros_like(g)
  elif case == "always":
    g = g.at[:, 0].set(0.95)
  want = gates.jei_exit(g, threshold)
  out = ExitHeadOutput(score=g)
  got = drive(gates.jei_gate_rule(threshold), out)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(
    drive(gates.jei_gate_rule(threshold), out, traced_layer=True), want
  )
  if case != "random":
    assert got.tolist() == [L - 1 if case == "never" else 0] * B


def test_bad_inputs_raise_value_error():
  g = _unit()
  for bad in (-0.1, 1.1):
    with pytest.raises(ValueError, match="threshold"):
      gates.learned_exit(g, bad)
    with pytest.raises(ValueError, match="threshold"):
      gates.learned_exit_rule(bad)
  for bad in (0.0, 1.0):
    with pytest.raises(ValueError, match="threshold"):
      gates.jei_exit(g, bad)
    with pytest.raises(ValueError, match="threshold"):
      gates.jei_gate_rule(bad)
  with pytest.raises(ValueError, match="gamma"):
    gates.jei_oracle_exit(g, jnp.ones(L), -1.0)
  with pytest.raises(ValueError, match="costs"):
    unchecked(gates.jei_oracle_exit)(g, jnp.ones(L + 1), 1.0)
  with pytest.raises(ValueError, match="num_layers"):
    gates.jei_gate_targets(jnp.array([0]), 0)
  with pytest.raises(ValueError, match="logits"):
    unchecked(gates.lte_targets)(jnp.zeros((3, L, 2)), jnp.zeros((4,), int))
  with pytest.raises(
    ValueError, match=r"g must hold probabilities in \[0, 1\]"
  ):
    gates.jei_exit(g.at[0, 0].set(jnp.nan))
  with pytest.raises(ValueError, match="score"):
    rule = gates.jei_gate_rule()
    rule.update(rule.init(B, None), ExitHeadOutput(halt=g[:, 0]), 0)
