"""Tests for jaxexit.exits.confidence (DeeBERT, max-softmax, PABEE)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxexit.exits import confidence
from jaxexit.exits.outputs import ExitHeadOutput
from tests.jaxexit.exits.rule_driver import drive, unchecked
from tests.tiers import fast_only

B, L, C = 16, 6, 3


def _logits(seed=0, shape=(B, L, C), scale=2.0):
  return scale * jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def test_entropy_hand_examples_and_deebert_formula():
  np.testing.assert_allclose(
    confidence.entropy(jnp.zeros((2, 4))), np.log(4.0), rtol=1e-6
  )
  assert float(confidence.entropy(jnp.array([50.0, 0.0, 0.0]))) < 1e-6
  z = _logits()
  deebert = jax.nn.logsumexp(z, -1) - jnp.sum(z * jax.nn.softmax(z, -1), -1)
  np.testing.assert_allclose(confidence.entropy(z), deebert, atol=1e-5)
  # Shift-invariant and finite for huge logits.
  np.testing.assert_allclose(
    confidence.entropy(z + 1e4), confidence.entropy(z), atol=1e-3
  )


def test_max_softmax_and_margin_hand_example():
  z = jnp.log(jnp.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]))
  np.testing.assert_allclose(confidence.max_softmax(z), [0.5, 0.8], rtol=1e-6)
  np.testing.assert_allclose(confidence.margin(z), [0.2, 0.7], rtol=1e-5)


def test_uncertainty_features():
  p = jnp.array([0.5, 0.3, 0.2])
  feats = confidence.uncertainty_features(jnp.log(p)[None])
  assert feats.shape == (1, 4)
  p2 = p**2 / jnp.sum(p**2)
  want = [0.5, -np.sum(p * np.log(p)), 0.2, -np.sum(p2 * np.log(p2))]
  np.testing.assert_allclose(feats[0], want, rtol=1e-5)
  grad = jax.grad(lambda z: confidence.uncertainty_features(z).sum())(_logits())
  np.testing.assert_allclose(grad, 0.0)
  assert confidence.uncertainty_features(_logits()).shape == (B, L, 4)


def test_entropy_exit_hand_example():
  # Layer 0 uniform (H = log 2 ≈ 0.69), layer 1 confident (H ≈ 0), layer 2.
  z = jnp.array([[[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]])
  assert confidence.entropy_exit(z, 0.5).tolist() == [1]
  assert confidence.entropy_exit(z, 0.7).tolist() == [0]
  assert confidence.entropy_exit(z, 0.0).tolist() == [2]  # never: H ≥ 0


def test_max_softmax_exit_degenerate():
  z = _logits()
  assert confidence.max_softmax_exit(z, 0.0).tolist() == [0] * B
  assert confidence.max_softmax_exit(z, 1.0).tolist() == [L - 1] * B


def _patience_reference(values, patience, tol=None):
  out = []
  for row in np.asarray(values):
    counter, prev, exit_at = 0, None, len(row) - 1
    for i, v in enumerate(row):
      if tol is None:
        cur = int(np.argmax(v))
        same = prev is not None and cur == prev
      else:
        cur = float(v)
        same = prev is not None and abs(cur - prev) < tol
      counter = counter + 1 if same else 0
      prev = cur
      if counter == patience:
        exit_at = i
        break
    out.append(exit_at)
  return out


def test_patience_exit_hand_example():
  preds = [0, 1, 1, 1, 2, 2]  # counters 0 0 1 2 0 1
  z = jax.nn.one_hot(jnp.array([preds]), 3)
  assert confidence.patience_exit(z, 1).tolist() == [2]
  assert confidence.patience_exit(z, 2).tolist() == [3]
  assert confidence.patience_exit(z, 3).tolist() == [5]
  f = jnp.array([[0.0, 1.0, 1.05, 1.1, 3.0]])  # counters 0 0 1 2 0
  assert confidence.patience_exit(f, 2, regression_tol=0.1).tolist() == [3]
  assert confidence.patience_exit(f, 2, regression_tol=0.01).tolist() == [4]


@pytest.mark.parametrize("patience", fast_only([1, 2, 3], 2))
def test_patience_exit_matches_loop_reference(patience):
  z = _logits(shape=(32, L, 2))  # two classes: many agreements
  assert confidence.patience_exit(z, patience).tolist() == (
    _patience_reference(z, patience)
  )
  f = _logits(seed=1, shape=(32, L), scale=0.3)
  assert confidence.patience_exit(f, patience, regression_tol=0.3).tolist() == (
    _patience_reference(f, patience, tol=0.3)
  )


def test_jit_equals_no_jit():
  z = _logits()
  for fn, arg in (
    (confidence.entropy_exit, 0.8),
    (confidence.max_softmax_exit, 0.6),
    (confidence.patience_exit, 2),
  ):
    np.testing.assert_array_equal(
      jax.jit(fn, static_argnums=1)(z, arg), fn(z, arg)
    )
  np.testing.assert_allclose(
    jax.jit(confidence.uncertainty_features)(z),
    confidence.uncertainty_features(z),
    rtol=1e-6,
  )


@pytest.mark.parametrize("case", ["random", "never", "always"])
@pytest.mark.parametrize("threshold", [0.3, 0.8])
def test_entropy_rule_matches_vectorised(case, threshold):
  z = _logits()
  confident = jnp.zeros_like(z).at[..., 0].set(30.0)
  z = {"random": z, "never": jnp.zeros_like(z), "always": confident}[case]
  want = confidence.entropy_exit(z, threshold)
  got = drive(confidence.entropy_rule(threshold), ExitHeadOutput(logits=z))
  np.testing.assert_array_equal(got, want)
  if case != "random":
    assert got.tolist() == [L - 1 if case == "never" else 0] * B


@pytest.mark.parametrize("case", ["random", "never", "always"])
@pytest.mark.parametrize("threshold", [0.5, 0.9])
def test_max_softmax_rule_matches_vectorised(case, threshold):
  z = _logits()
  confident = jnp.zeros_like(z).at[..., 0].set(30.0)
  z = {"random": z, "never": jnp.zeros_like(z), "always": confident}[case]
  want = confidence.max_softmax_exit(z, threshold)
  got = drive(
    confidence.max_softmax_rule(threshold),
    ExitHeadOutput(logits=z),
    traced_layer=True,
  )
  np.testing.assert_array_equal(got, want)
  if case != "random":
    assert got.tolist() == [L - 1 if case == "never" else 0] * B


@pytest.mark.parametrize("case", ["random", "never", "always"])
@pytest.mark.parametrize("patience", [1, 2, 4])
def test_patience_rule_matches_vectorised(case, patience):
  z = _logits(shape=(B, L, 2))
  if case == "never":  # prediction flips every layer
    z = jax.nn.one_hot(jnp.broadcast_to(jnp.arange(L) % 2, (B, L)), 2)
  elif case == "always":  # constant prediction: exit at layer `patience`
    z = jnp.zeros_like(z).at[..., 1].set(1.0)
  want = confidence.patience_exit(z, patience)
  got = drive(confidence.patience_rule(patience), ExitHeadOutput(logits=z))
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(
    drive(
      confidence.patience_rule(patience),
      ExitHeadOutput(logits=z),
      traced_layer=True,
    ),
    want,
  )
  if case == "never":
    assert got.tolist() == [L - 1] * B
  if case == "always":
    assert got.tolist() == [min(patience, L - 1)] * B


@pytest.mark.parametrize("case", ["random", "never", "always"])
def test_patience_rule_regression_matches_vectorised(case):
  f = _logits(seed=3, shape=(B, L), scale=0.3)
  if case == "never":
    f = jnp.broadcast_to(jnp.arange(L, dtype=jnp.float32), (B, L))
  elif case == "always":
    f = jnp.ones((B, L))
  want = confidence.patience_exit(f, 2, regression_tol=0.3)
  rule = confidence.patience_rule(2, regression_tol=0.3)
  np.testing.assert_array_equal(drive(rule, ExitHeadOutput(logits=f)), want)
  # [B, L, 1] regression heads give the same answer.
  np.testing.assert_array_equal(
    drive(rule, ExitHeadOutput(logits=f[..., None])), want
  )


def test_bad_inputs_raise_value_error():
  z = _logits()
  for bad in (-0.1, float("inf"), float("nan")):
    with pytest.raises(ValueError, match="threshold"):
      confidence.entropy_exit(z, bad)
    with pytest.raises(ValueError, match="threshold"):
      confidence.entropy_rule(bad)
  for bad in (-0.1, 1.5):
    with pytest.raises(ValueError, match="threshold"):
      confidence.max_softmax_exit(z, bad)
    with pytest.raises(ValueError, match="threshold"):
      confidence.max_softmax_rule(bad)
  for bad in (0, -1):
    with pytest.raises(ValueError, match="patience"):
      confidence.patience_exit(z, bad)
    with pytest.raises(ValueError, match="patience"):
      confidence.patience_rule(bad)
  for bad in (2.5, True):
    with pytest.raises(ValueError, match="patience"):
      unchecked(confidence.patience_exit)(z, bad)
  with pytest.raises(ValueError, match="regression_tol"):
    confidence.patience_exit(z[..., 0], 2, regression_tol=-1.0)
  with pytest.raises(ValueError, match=r"logits must not hold NaN or \+inf"):
    confidence.entropy_exit(z.at[0, 1, 2].set(jnp.inf), 0.5)
  with pytest.raises(ValueError, match="C >= 2"):
    confidence.margin(jnp.zeros((2, 1)))
  with pytest.raises(ValueError, match="logits"):
    unchecked(confidence.entropy_exit)(z[0, 0], 0.5)
  with pytest.raises(ValueError, match="logits"):
    rule = confidence.patience_rule(2)
    rule.update(rule.init(B, None), ExitHeadOutput(halt=z[:, 0, 0]), 0)
