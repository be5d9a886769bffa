"""Serve models: the tiny model is seeded, its hash follows its weights."""

import jax.numpy as jnp
import pytest

from jaxexit.serve import models


def test_tiny_hash_follows_seed_and_weights():
  a, b = models.build_model("tiny"), models.build_model("tiny")
  assert a.num_layers == models.TINY_LAYERS
  assert models.weights_hash(a) == models.weights_hash(b)
  assert models.weights_hash(a) != models.weights_hash(
    models.build_model("tiny", seed=1)
  )
  scale = b.norm.scale
  scale[...] = scale[...].at[0].add(jnp.float32(1e-6))
  assert models.weights_hash(a) != models.weights_hash(b)


def test_unknown_model():
  with pytest.raises(ValueError, match="not one of"):
    models.build_model("gpt5")
