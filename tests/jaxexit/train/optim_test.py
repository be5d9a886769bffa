"""Tests of the optimizer/schedule builders and parameter groups."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxexit.train import optim


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
@pytest.mark.parametrize("schedule", optim.SCHEDULES)
def test_every_optimizer_and_schedule_builds_and_steps(name, schedule):
  cfg = optim.OptimConfig(
    name=name,
    schedule=schedule,
    warmup_steps=2,
    total_steps=10,
    weight_decay=0.0 if name == "adam" else 1e-4,
    momentum=0.9,
    grad_clip=1.0,
  )
  tx = optim.build_optimizer(cfg)
  params = {"w": jnp.ones((3,))}
  state = tx.init(params)
  for _ in range(3):
    updates, state = tx.update({"w": jnp.full((3,), 5.0)}, state, params)
    params = optax.apply_updates(params, updates)
  assert np.all(np.isfinite(params["w"])) and np.all(params["w"] < 1.0)


def test_schedule_values():
  cfg = optim.OptimConfig(
    learning_rate=1.0,
    schedule="warmup_cosine",
    warmup_steps=10,
    total_steps=110,
    end_lr=0.1,
  )
  lr = optim.build_schedule(cfg)
  np.testing.assert_allclose(
    [lr(0), lr(5), lr(10), lr(60), lr(110)],
    [0.0, 0.5, 1.0, 0.55, 0.1],
    atol=1e-6,
  )
  lin = optim.build_schedule(
    optim.OptimConfig(
      learning_rate=1.0, schedule="linear", total_steps=10, end_lr=0.0
    )
  )
  np.testing.assert_allclose(
    [lin(0), lin(5), lin(10), lin(20)], [1.0, 0.5, 0.0, 0.0], atol=1e-6
  )
  const = optim.build_schedule(
    optim.OptimConfig(learning_rate=2.0, warmup_steps=4)
  )
  np.testing.assert_allclose(
    [const(0), const(2), const(4), const(1000)], [0.0, 1.0, 2.0, 2.0], atol=1e-6
  )
  cos = optim.build_schedule(
    optim.OptimConfig(learning_rate=1.0, schedule="cosine", total_steps=10)
  )
  np.testing.assert_allclose(
    [cos(0), cos(5), cos(10)], [1.0, 0.5, 0.0], atol=1e-6
  )


@pytest.mark.parametrize(
  "kwargs, field, value",
  [
    (dict(name="lion"), "name", "'lion'"),
    (dict(learning_rate=0.0), "learning_rate", "0.0"),
    (dict(learning_rate=-1e-3), "learning_rate", "-0.001"),
    (dict(learning_rate=float("nan")), "learning_rate", "nan"),
    (dict(weight_decay=-0.1), "weight_decay", "-0.1"),
    (dict(b1=1.0), "b1", "1.0"),
    (dict(b2=-0.5), "b2", "-0.5"),
    (dict(momentum=1.5), "momentum", "1.5"),
    (dict(schedule="step"), "schedule", "'step'"),
    (dict(warmup_steps=-1), "warmup_steps", "-1"),
    (dict(schedule="cosine"), "total_steps", "None"),
    (dict(schedule="linear", total_steps=0), "total_steps", "0"),
    (dict(schedule="warmup_cosine", total_steps=10), "warmup_steps", "0"),
    (
      dict(schedule="cosine", warmup_steps=10, total_steps=10),
      "total_steps",
      "10",
    ),
    (dict(grad_clip=0.0), "grad_clip", "0.0"),
    (dict(name="adam", weight_decay=0.1), "weight_decay", "0.1"),
    (dict(end_lr=-1.0), "end_lr", "-1.0"),
  ],
)
def test_bad_config_values_raise_naming_them(kwargs, field, value):
  with pytest.raises(ValueError) as e:
    optim.OptimConfig(**kwargs)
  assert field in str(e.value) and value in str(e.value), str(e.value)


def test_config_is_frozen_and_keyword_only():
  cfg = optim.OptimConfig()
  with pytest.raises(AttributeError):
    cfg.learning_rate = 1.0  # type: ignore[misc]
  with pytest.raises(TypeError):
    optim.OptimConfig("adam")  # type: ignore[misc]


class Palbert(nnx.Module):
  """A stand-in with a body and an "exit" (lambda) layer."""

  def __init__(self, rngs: nnx.Rngs):
    self.body = nnx.Linear(3, 3, rngs=rngs)
    self.exit_lambda = nnx.Linear(3, 1, rngs=rngs)


def test_param_group_gets_its_own_learning_rate():
  model = Palbert(nnx.Rngs(0))
  tx = optim.build_optimizer(
    optim.OptimConfig(name="sgd", learning_rate=0.1),
    [
      optim.ParamGroup(
        name="exit",
        predicate=optim.path_contains("exit"),
        config=optim.OptimConfig(name="sgd", learning_rate=2.0),
      )
    ],
  )
  before = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
  grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
  opt.update(model, grads)
  after = nnx.state(model, nnx.Param)
  delta = jax.tree.map(lambda a, b: a - b, after, before)
  np.testing.assert_allclose(delta["body"]["kernel"][...], -0.1, rtol=1e-6)
  np.testing.assert_allclose(
    delta["exit_lambda"]["kernel"][...], -2.0, rtol=1e-6
  )
  np.testing.assert_allclose(delta["exit_lambda"]["bias"][...], -2.0, rtol=1e-6)
  labels = optim.label_params(
    nnx.state(model, nnx.Param),
    [
      optim.ParamGroup(
        name="exit",
        predicate=optim.path_contains("exit"),
        config=optim.OptimConfig(),
      )
    ],
  )
  assert sorted(jax.tree.leaves(labels)) == [
    "default",
    "default",
    "exit",
    "exit",
  ]


def test_grouped_clipping_is_global():
  sgd = optim.OptimConfig(name="sgd", learning_rate=1.0, grad_clip=1.0)
  tx = optim.build_optimizer(
    sgd,
    [
      optim.ParamGroup(
        name="exit",
        predicate=optim.path_contains("exit"),
        config=optim.OptimConfig(name="sgd", learning_rate=1.0),
      )
    ],
  )
  params = {"body": jnp.zeros(()), "exit": jnp.zeros(())}
  grads = {"body": jnp.asarray(3.0), "exit": jnp.asarray(4.0)}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(
    [updates["body"], updates["exit"]], [-0.6, -0.8], rtol=1e-6
  )


def test_bad_groups_raise():
  with pytest.raises(ValueError, match="grad_clip=1.0"):
    optim.ParamGroup(
      name="exit",
      predicate=optim.path_contains("exit"),
      config=optim.OptimConfig(grad_clip=1.0),
    )
  with pytest.raises(ValueError, match="'default'"):
    optim.ParamGroup(
      name="default",
      predicate=optim.path_contains("x"),
      config=optim.OptimConfig(),
    )
  g = optim.ParamGroup(
    name="a", predicate=optim.path_contains("x"), config=optim.OptimConfig()
  )
  with pytest.raises(ValueError, match="unique"):
    optim.build_optimizer(optim.OptimConfig(), [g, g])


def test_param_path():
  tree = {"enc": {"layers": [{"exit_gate": nnx.Param(jnp.zeros(()))}]}}
  paths = []
  jax.tree_util.tree_map_with_path(
    lambda p, _: paths.append(optim.param_path(p)), tree
  )
  assert paths == ["enc/layers/0/exit_gate"]
