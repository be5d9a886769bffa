import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxexit import execution
from jaxexit.exits import rules
from tests.jaxexit.execution import toy_stack
from tests.tiers import fast_only, heavy

L = 6


def patience_like():
  """A stateful rule: exit after 2 consecutive layers with the same argmax."""

  def init(batch, rule_inputs):
    return {
      "prev": jnp.full((batch,), -1, jnp.int32),
      "count": jnp.zeros((batch,), jnp.int32),
    }

  def update(state, out, layer):
    pred = jnp.argmax(out.logits, -1).astype(jnp.int32)
    count = jnp.where(pred == state["prev"], state["count"] + 1, 0)
    return {"prev": pred, "count": count}, count >= 2

  return rules.ExitRule(init, update)


def halting_threshold():
  return rules.memoryless(lambda out, layer: out.halt > 0.7)


RULES = {
  "never": (rules.never, None),
  "always": (rules.always, None),
  "fixed3": (lambda: rules.fixed_depth(3), None),
  "preset": (rules.preset_depth, "depths"),
  "patience_like": (patience_like, None),
  "halt>0.7": (halting_threshold, None),
}


def _run_all(rule_name, batch, seed=0, **compact_opts):
  stack, params = toy_stack.make(L, jax.random.key(seed))
  carry = toy_stack.inputs(batch, jax.random.key(seed + 1))
  make_rule, needs = RULES[rule_name]
  rule = make_rule()
  rule_inputs = None
  if needs == "depths":
    rule_inputs = jax.random.randint(
      jax.random.key(seed + 2), (batch,), 1, L + 1
    )
  results = {}
  for mode in execution.MODES:
    opts = compact_opts if mode == "compacted" else {}
    runner = execution.make_runner(mode, stack, rule, **opts)
    results[mode] = runner(params, carry, rule_inputs=rule_inputs)
  return results, rule_inputs


def _assert_same(results):
  ref = results["simulate"]
  for mode, res in results.items():
    np.testing.assert_array_equal(res.exit_layer, ref.exit_layer, err_msg=mode)
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(
        a, b, rtol=1e-6, atol=1e-6, err_msg=mode
      ),
      res.outputs,
      ref.outputs,
    )


# The fast tier: the per-example, stateful and halting rules at batch 5
# (never in test_never_equals_full_model; compaction with random depths in
# test_outputs_follow_examples_through_compaction and
# test_compacted_program_count_is_bounded); the whole grid in the heavy tier.
@pytest.mark.parametrize(
  "rule_name", fast_only(RULES, "preset", "patience_like", "halt>0.7")
)
@pytest.mark.parametrize("batch", fast_only([1, 5, 16], 5))
def test_modes_agree(rule_name, batch):
  results, _ = _run_all(rule_name, batch)
  _assert_same(results)


@heavy
@pytest.mark.parametrize("segment_layers", [1, 2, 4])
@pytest.mark.parametrize("buckets", ["pow2", "pow2_half", "exact", (3, 7)])
def test_compacted_options_agree(segment_layers, buckets):
  results, _ = _run_all(
    "preset", 13, seed=3, segment_layers=segment_layers, buckets=buckets
  )
  _assert_same(results)


@heavy
@pytest.mark.parametrize("seed", range(5))
def test_random_exit_decisions(seed):
  results, depths = _run_all("preset", 32, seed=seed)
  _assert_same(results)
  np.testing.assert_array_equal(results["compacted"].exit_layer, depths - 1)


@heavy
def test_degenerate_cases():
  never, _ = _run_all("never", 8)
  always, _ = _run_all("always", 8)
  for res in never.values():
    np.testing.assert_array_equal(res.exit_layer, L - 1)
  for res in always.values():
    np.testing.assert_array_equal(res.exit_layer, 0)


def test_never_equals_full_model():
  stack, params = toy_stack.make(L)
  carry = toy_stack.inputs(4)
  full = carry
  for layer in range(L):
    full = stack.layer_fn(params, layer, full)
  logits = stack.head_fn(params, L - 1, full).logits
  for mode in execution.MODES:
    res = execution.run(mode, stack, rules.never(), params, carry)
    np.testing.assert_allclose(res.outputs.logits, logits, rtol=1e-6, atol=1e-6)


def test_outputs_follow_examples_through_compaction():
  results, _ = _run_all("preset", 16, seed=7)
  np.testing.assert_array_equal(
    results["compacted"].outputs.extra["tag"], np.arange(16)
  )


def test_simulate_per_layer_and_grad():
  stack, params = toy_stack.make(L)
  carry = toy_stack.inputs(4)
  res = execution.simulate(stack, rules.never(), params, carry)
  assert res.per_layer.logits.shape == (4, L, toy_stack.C)
  assert res.exit_condition.shape == (4, L)

  def loss(p):
    r = execution.simulate(stack, rules.never(), p, carry)
    return jnp.sum(r.per_layer.logits**2)

  grads = jax.grad(loss)(params)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


@heavy
def test_compacted_program_count_is_bounded():
  stack, params = toy_stack.make(L)
  runner = execution.CompactedRunner(stack, rules.preset_depth())
  for seed in range(4):
    carry = toy_stack.inputs(32, jax.random.key(seed))
    depths = jax.random.randint(jax.random.key(10 + seed), (32,), 1, L + 1)
    runner(params, carry, rule_inputs=depths)
  num_buckets = len(execution.bucket_sizes(32))
  bound = 2 * num_buckets + num_buckets * (num_buckets - 1) // 2
  assert 0 < runner.num_compiled_programs() <= bound


def test_bucket_sizes():
  assert execution.bucket_sizes(32, "pow2") == (1, 2, 4, 8, 16, 32)
  assert execution.bucket_sizes(24, "pow2") == (1, 2, 4, 8, 16, 24)
  assert execution.bucket_sizes(5, "exact") == (1, 2, 3, 4, 5)
  assert execution.bucket_sizes(32) == execution.bucket_sizes(32, "pow2_half")
  assert execution.bucket_sizes(32, "pow2_half") == (
    1,
    2,
    3,
    4,
    6,
    8,
    12,
    16,
    24,
    32,
  )
  assert execution.bucket_sizes(10, (4, 64)) == (4, 10)


@pytest.mark.parametrize(
  "bad,match",
  [
    (dict(mode="fast"), "mode='fast'"),
    (dict(mode="compacted", segment_layers=0), "segment_layers=0"),
    (dict(mode="compacted", buckets="primes"), "buckets='primes'"),
    (dict(mode="compacted", buckets=(0, 4)), "bucket size=0"),
  ],
)
def test_bad_options(bad, match):
  stack, _ = toy_stack.make(L)
  with pytest.raises(ValueError, match=match.replace("(", r"\(")):
    execution.make_runner(stack=stack, rule=rules.never(), **bad)


def test_bad_carry_and_stack():
  stack, params = toy_stack.make(L)
  with pytest.raises(ValueError, match="batch axis first"):
    execution.run(
      "simulate",
      stack,
      rules.never(),
      params,
      {"h": jnp.zeros((4, 8)), "tag": jnp.zeros((3,), jnp.int32)},
    )
  with pytest.raises(ValueError, match="num_layers"):
    execution.run(
      "simulate",
      stack._replace(num_layers=0),
      rules.never(),
      params,
      toy_stack.inputs(2),
    )
  with pytest.raises(ValueError, match="rule_inputs"):
    execution.run(
      "early_stop",
      stack,
      rules.preset_depth(),
      params,
      toy_stack.inputs(2),
      rule_inputs=jnp.ones((3,), jnp.int32),
    )
