"""state_shardings / shard_state on a model, its optimizer and a train step.

On one device the specs still name the mesh axes (of size 1), so the
rules are checked here; the 8-device child (`_child_main`, run as a script
with `XLA_FLAGS=--xla_force_host_platform_device_count=8`) places a tiny
Llama, LLaVA and Mamba on mesh (data 2, fsdp 2, tensor 2) and checks that
3 AdamW steps with sharded parameters, optimizer state and batch equal the
same steps on one device.
"""

import contextlib
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from tests.jaxexit.sharding.device_children import child_env, run_children
from tests.tiers import slow

if __name__ == "__main__":  # The 8-device child checks shapes like conftest.
  from jaxtyping import install_import_hook

  install_import_hook(["jaxexit"], "beartype.beartype")

from jaxexit import models, sharding  # noqa: E402
from jaxexit.models.llama_weights import LLAMA_CONFIGS  # noqa: E402
from jaxexit.sharding.logical import path_str  # noqa: E402
from jaxexit.train import make_train_step, split_train_state  # noqa: E402
from jaxexit.train.lm import causal_lm_loss  # noqa: E402

LLAVA = models.LLAVA_CONFIGS["tiny"]
BATCH = 8

# Named parameters and their specs under the default rules (train-state
# paths: 0 = model, 1 = optimizer).
EXPECTED = {
  "llama": {
    "0/embed_tokens/embedding": P("tensor", "fsdp"),
    "0/layers/0/self_attn/q_proj/kernel": P("fsdp", "tensor"),
    "0/layers/1/self_attn/k_proj/kernel": P("fsdp", "tensor"),
    "0/layers/0/self_attn/o_proj/kernel": P("tensor", "fsdp"),
    "0/layers/0/mlp/down_proj/kernel": P("tensor", "fsdp"),
    "0/norm/scale": P("fsdp"),
    "0/unembed/kernel": P("fsdp", "tensor"),
    "1/opt_state/0/mu/layers/0/self_attn/q_proj/kernel": P("fsdp", "tensor"),
    "1/opt_state/0/nu/embed_tokens/embedding": P("tensor", "fsdp"),
    "1/opt_state/0/count": P(),
    "1/step": P(),
  },
  "mamba": {
    "0/embeddings/embedding": P("tensor", "fsdp"),
    "0/layers/mixer/in_proj/kernel": P(None, "fsdp", "tensor"),
    "0/layers/mixer/A_log": P(None, "tensor", None),
    "0/layers/mixer/dt_proj/kernel": P(None, None, "tensor"),
    "0/layers/mixer/out_proj/kernel": P(None, "tensor", "fsdp"),
    "1/opt_state/0/mu/layers/mixer/conv1d/weight": P(None, "tensor", None),
  },
  "llava": {
    "0/vision/layers/0/q_proj/kernel": P("fsdp", "tensor"),
    "0/vision/position_embedding": P(None, "fsdp"),
    "0/projector/linear_1/kernel": P("fsdp", "tensor"),
    "0/projector/linear_2/kernel": P("tensor", "fsdp"),
    "0/lm/embed_tokens/embedding": P("tensor", "fsdp"),
    "1/opt_state/0/nu/lm/layers/1/mlp/up_proj/kernel": P("fsdp", "tensor"),
  },
}


def _model(family):
  rngs = nnx.Rngs(0)
  if family == "llama":
    return models.LlamaLM(LLAMA_CONFIGS["tiny"], rngs=rngs)
  if family == "mamba":
    return models.MambaLM(models.MAMBA_CONFIGS["tiny"], rngs=rngs)
  return models.LlavaLM(LLAVA, rngs=rngs)


def _batches(family, model, steps=3):
  key = jax.random.key(1)
  out = []
  for i in range(steps):
    k_text, k_image = jax.random.split(jax.random.fold_in(key, i))
    if family != "llava":
      out.append(
        {"tokens": jax.random.randint(k_text, (BATCH, 12), 0, model.vocab_size)}
      )
      continue
    n, image_id = LLAVA.num_image_tokens, LLAVA.image_token_id
    text = jax.random.randint(k_text, (BATCH, 8), 0, image_id)
    tokens = jnp.concatenate(
      [text[:, :2], jnp.full((BATCH, n), image_id), text[:, 2:]], axis=1
    )
    size = LLAVA.vision.image_size
    images = jax.random.normal(k_image, (BATCH, size, size, 3))
    out.append({"tokens": tokens, "images": images})
  return out


def _llava_loss(model, batch, rng):
  del rng
  tokens = batch["tokens"]
  logits = model(tokens, batch["images"]).logits[:, :-1]  # [B, T-1, V]
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
  return jnp.mean(nll), {}


def _specs(state, mesh, family):
  shardings = sharding.state_shardings(state, mesh, family=family)
  return {
    path_str(path): s.spec
    for path, s in jax.tree_util.tree_leaves_with_path(shardings)
  }


def _placed_specs(state):
  return {
    path_str(path): leaf.sharding.spec
    for path, leaf in jax.tree_util.tree_leaves_with_path(state)
  }


def _expected_spec(axes):
  """The spec of `axes` under the default rules when every size divides."""
  rules = {k: v for k, v in sharding.DEFAULT_RULES.items() if k != "batch"}
  return P(*(rules.get(name) for name in axes))


def _check_specs(state, specs, family):
  axes = sharding.logical_axes(state, family)
  for path, spec in specs.items():
    if path in axes:
      assert spec == _expected_spec(axes[path]), (path, spec, axes[path])
    else:
      assert spec == P(), (path, spec)
    for moment in ("/mu/", "/nu/"):
      if moment in path:
        param = "0/" + path.split(moment)[1]
        assert spec == specs[param], (path, spec, specs[param])
  for path, spec in EXPECTED[family].items():
    assert specs[path] == spec, (path, specs[path], spec)


@pytest.mark.parametrize("family", ["llama", "mamba"])
def test_train_state_specs_follow_rules_and_parameters(family):
  mesh = sharding.make_mesh()
  _, state = split_train_state(_model(family), optax.adamw(1e-3))
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # the default rules never warn
    specs = _specs(state, mesh, family)
  _check_specs(state, specs, family)
  assert _placed_specs(sharding.shard_state(state, mesh, family=family)) == (
    specs
  )


def test_unused_rule_warns_and_unknown_mesh_axis_raises():
  mesh = sharding.make_mesh()
  state = nnx.state(_model("llama"))
  rules = {"embed": "fsdp", "state": "tensor", "batch": ("data",)}
  with pytest.warns(UserWarning, match=r"rules \{'state': 'tensor'\} match no"):
    shardings = sharding.state_shardings(state, mesh, rules, family="llama")
  assert shardings["layers"][0]["self_attn"]["q_proj"]["kernel"].spec == P(
    "fsdp", None
  )
  with pytest.raises(ValueError, match=r"'heads' -> 'model'.*\['model'\]"):
    sharding.state_shardings(state, mesh, {"heads": "model"}, family="llama")


def _child_main() -> None:
  """Runs in the 8-device child: sharded steps == single-device steps."""
  assert jax.device_count() == 8, jax.devices()
  mesh = sharding.make_mesh("data=2,fsdp=2,tensor=2")
  for family in ("llama", "mamba", "llava"):
    loss_fn = _llava_loss if family == "llava" else causal_lm_loss
    step = make_train_step(loss_fn)
    batches = _batches(family, _model(family))
    results = []
    for sharded in (False, True):
      graphdef, state = split_train_state(_model(family), optax.adamw(1e-3))
      if sharded:
        state = sharding.shard_state(state, mesh, family=family)
        placed = jax.tree.map(lambda x: x.sharding, state[0])
        _check_specs(state, _placed_specs(state), family)
      losses = []
      with jax.set_mesh(mesh) if sharded else contextlib.nullcontext():
        for i, batch in enumerate(batches):
          if sharded:
            batch = sharding.shard_batch(
              batch, mesh, sharding.DEFAULT_RULES["batch"]
            )
          state, metrics = step(graphdef, state, batch, jax.random.key(i))
          losses.append(float(metrics["loss"]))
      devices = {len(x.sharding.device_set) for x in jax.tree.leaves(state)}
      assert devices == {8 if sharded else 1}, devices
      results.append((losses, jax.device_get(state[0])))
    # GSPMD keeps each updated parameter in its input sharding.
    assert all(
      jax.tree.leaves(
        jax.tree.map(
          lambda x, s: x.sharding.is_equivalent_to(s, x.ndim), state[0], placed
        )
      )
    )
    (loss_1, params_1), (loss_8, params_8) = results
    diff = max(
      float(np.max(np.abs(a - b)))
      for a, b in zip(jax.tree.leaves(params_1), jax.tree.leaves(params_8))
    )
    np.testing.assert_allclose(loss_8, loss_1, rtol=1e-5, atol=1e-5)
    assert diff < 1e-5, (family, diff)
    print(f"CHILD {family} losses {loss_1} max |params diff| {diff:.2e}")
  print("CHILD OK")


@slow
def test_sharded_steps_match_one_device_in_8_device_child():
  run_children(__file__, [child_env(8)], timeout=600)


if __name__ == "__main__" and "--child" in sys.argv:
  jax.config.update("jax_numpy_rank_promotion", "raise")
  _child_main()
