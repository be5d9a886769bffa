"""pruned_forward under jit and grad: jit == eager, finite gradients."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxexit.pruning import hidrop_from_stages, pruned_forward
from tests.jaxexit.pruning.tiny import make_case, tiny_lm
from tests.tiers import slow

# Injection at 1, drops after 2 and 3 (scored by blocks 3 and 4), exit at 5.
SCHEDULE = hidrop_from_stages(6, 8, 1, 5, (2, 3), (4, 2))


def _loss_and_grads(lm, case, selection):
  graphdef, state = nnx.split(lm)
  labels = jax.random.randint(
    jax.random.key(3), case.inputs.text_pos.shape, 0, lm.vocab_size
  )

  def loss(s):
    out = pruned_forward(
      nnx.merge(graphdef, s), case.inputs, SCHEDULE, selection=selection
    )
    logp = jax.nn.log_softmax(out.logits)
    nll = -jnp.take_along_axis(logp, labels[..., None], -1)[..., 0]
    return jnp.mean(nll), out.logits

  return jax.jit(jax.value_and_grad(loss, has_aux=True))(state)


def _kernel(g, i, name):
  return np.asarray(g["layers"][i]["self_attn"][name]["kernel"][...])


@slow
def test_jit_grad_hard_and_soft():
  lm, case = tiny_lm(), make_case(pad=(0, 2))
  eager = pruned_forward(lm, case.inputs, SCHEDULE)
  (_, logits_h), g_hard = _loss_and_grads(lm, case, "hard")
  (_, logits_s), g_soft = _loss_and_grads(lm, case, "soft")
  np.testing.assert_allclose(logits_h, eager.logits, rtol=1e-5, atol=1e-5)
  # The soft mode's multiplier is exactly 1 forward.
  np.testing.assert_array_equal(logits_h, logits_s)
  for g in (g_hard, g_soft):
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(g))
    for i in range(6):  # every block learns, the pruned stages included
      assert np.abs(_kernel(g, i, "q_proj")).max() > 0, i
  # Only the soft mode routes gradient through the selection: the scoring
  # block 3 gets an extra term, block 5 (never scores) does not.
  assert not np.allclose(
    _kernel(g_hard, 3, "k_proj"), _kernel(g_soft, 3, "k_proj")
  )
  np.testing.assert_allclose(
    _kernel(g_hard, 5, "k_proj"),
    _kernel(g_soft, 5, "k_proj"),
    rtol=1e-5,
    atol=1e-7,
  )
