"""DYNAMAX training keeps the frozen backbone out of its checkpoints."""

import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from jaxexit import train as train_lib
from jaxexit.methods import dynamax_train
from tests.jaxexit.methods.dynamax_test import _backbone, _classifiers
from tests.tiers import slow


def _features(backbone):
  tokens = np.tile(np.arange(12, dtype=np.int32), (16, 1)) % 5
  return dynamax_train.exit_features(
    backbone, tokens, np.full(16, 12), (2, 4), batch_size=8, progress=False
  )


def _train(backbone, heads, feats, workdir, num_steps):
  return dynamax_train.train_exit_classifiers(
    backbone,
    heads,
    feats,
    optim=train_lib.OptimConfig(learning_rate=3e-2),
    num_steps=num_steps,
    batch_size=8,
    workdir=workdir,
    checkpoint_every=2,
    progress=False,
  )[0]


def _saved_paths(workdir, step) -> list[str]:
  """The array paths of a checkpoint, from orbax's metadata."""
  path = os.path.join(workdir, "checkpoints", str(step), "default")
  tree = ocp.StandardCheckpointer().metadata(path).item_metadata.tree
  return [
    "/".join(str(getattr(k, "key", k)) for k in p)
    for p, _ in jax.tree_util.tree_leaves_with_path(tree)
  ]


def _params(module):
  return {
    "/".join(map(str, p)): np.asarray(v)
    for p, v in nnx.to_flat_state(nnx.state(module))
  }


@slow
def test_checkpoints_hold_no_backbone_and_resume(tmp_path):
  backbone = _backbone()
  before = _params(backbone)
  feats = _features(backbone)
  ref = _train(backbone, _classifiers("mlp"), feats, tmp_path / "ref", 8)

  saved = _saved_paths(tmp_path / "ref", 8)
  assert not [p for p in saved if "backbone" in p]
  model = sorted(p[len("state/0/") :] for p in saved if p.startswith("state/0"))
  assert model == sorted(f"{p}/value" for p in _params(ref))
  assert len(model) < len(before)  # the backbone has more arrays

  # Kill after step 4: the newer checkpoints are lost. A resume from step 4
  # with other initial classifiers must end where the uninterrupted run did.
  shutil.copytree(tmp_path / "ref", tmp_path / "cut")
  for step in (6, 8):
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / str(step))
  other = _classifiers("mlp", seed=7)
  resumed = _train(backbone, other, feats, tmp_path / "cut", 8)
  assert resumed is other  # updated in place
  jax.tree.map(np.testing.assert_array_equal, _params(resumed), _params(ref))
  fresh = _classifiers("mlp", seed=7)
  fresh = _train(backbone, fresh, feats, tmp_path / "fresh", 8)
  assert not np.array_equal(
    _params(fresh)["exits/0/up/kernel"], _params(ref)["exits/0/up/kernel"]
  )
  jax.tree.map(np.testing.assert_array_equal, _params(backbone), before)
