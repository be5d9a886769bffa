"""LYNX's probe: learns a noisy linear-ish signal, early-stops, refuses
features of another layer set."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxexit.methods import lynx_probe


def _events(n=2000, f=12, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, f)) * np.linspace(0.5, 20.0, f)  # unequal scales
  signal = x[:, 0] / 0.5 - x[:, 3] / (0.5 + 19.5 * 3 / (f - 1))
  y = (signal + rng.normal(0, 0.7, n) > 0.8).astype(np.int32)  # imbalanced
  return x.astype(np.float32), y


def test_probe_learns_and_reports():
  x, y = _events()
  probe, report = lynx_probe.train_probe(x, y, (9, 16), max_epochs=60)
  assert report.val_auc > 0.9, report
  assert report.val_accuracy > 0.8, report
  assert 1 <= report.best_epoch <= report.epochs <= 60
  p = np.asarray(probe(jnp.asarray(x[:5])))
  assert p.shape == (5,) and ((p > 0) & (p < 1)).all()


def test_labels_without_signal_give_chance_auc():
  x, _ = _events()
  y = np.random.default_rng(1).integers(0, 2, len(x))
  _, report = lynx_probe.train_probe(x, y, (9,), max_epochs=30)
  assert 0.4 < report.val_auc < 0.6, report


def test_roc_auc_matches_the_pair_count():
  s = np.array([0.1, 0.4, 0.35, 0.8, 0.4])
  y = np.array([0, 0, 1, 1, 1])
  pairs = [(a > b) + 0.5 * (a == b) for a in s[y == 1] for b in s[y == 0]]
  assert lynx_probe.roc_auc(s, y) == pytest.approx(np.mean(pairs))


def test_bad_inputs():
  x, y = _events(200)
  probe, _ = lynx_probe.train_probe(x, y, (9, 16), max_epochs=2)
  with pytest.raises(ValueError, match="layers"):
    probe.check_features((8, 16), 12)
  with pytest.raises(ValueError, match="12 features"):
    probe(jnp.zeros((2, 10)))
  with pytest.raises(ValueError, match="both classes"):
    lynx_probe.train_probe(x, np.zeros(200, np.int32), (9,))
  with pytest.raises(ValueError, match="0 or 1"):
    lynx_probe.train_probe(x, np.full(200, 2), (9,))
