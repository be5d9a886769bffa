"""Prompt layout -> PrunedInputs, against the unpruned LLaVA forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxexit.models.llava import LLAVA_CONFIGS, LlavaLM
from jaxexit.pruning import full_schedule, hidrop_from_stages, pruned_forward
from jaxexit.pruning.prompt import (
  llava_pruned_inputs,
  merged_prompt,
  prompt_positions,
  question_suffix,
)
from tests.tiers import slow


def test_question_suffix_puts_the_cue_after_each_question():
  q = np.array([[5, 6, 7, 0], [8, 0, 0, 0]], np.int32)
  suffix, lens = question_suffix(q, np.array([3, 1]), cue_id=9, pad_id=0)
  np.testing.assert_array_equal(suffix, [[5, 6, 7, 9, 0], [8, 9, 0, 0, 0]])
  np.testing.assert_array_equal(lens, [4, 2])


@pytest.mark.parametrize("lens", [[0, 1], [5, 1]])
def test_question_suffix_rejects_bad_lengths(lens):
  with pytest.raises(ValueError, match="question_lens"):
    question_suffix(
      np.zeros((2, 4), np.int32), np.array(lens), cue_id=9, pad_id=0
    )


def test_prompt_positions_are_the_unpruned_ids():
  text, vision = prompt_positions(2, 3, 4)
  np.testing.assert_array_equal(text, [0, 1, 5, 6, 7, 8])
  np.testing.assert_array_equal(vision, [2, 3, 4])
  with pytest.raises(ValueError, match="num_image"):
    prompt_positions(1, 0, 4)


def _case():
  cfg = LLAVA_CONFIGS["tiny"]
  model = LlavaLM(cfg, rngs=nnx.Rngs(0))
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  prefix = np.array([[1, 2], [1, 2]], np.int32)
  suffix = np.array([[5, 6, 7, 9, 0], [8, 9, 0, 0, 0]], np.int32)
  lens = np.array([4, 2], np.int32)
  return cfg, model, images, prefix, suffix, lens


@slow
def test_full_schedule_matches_the_unpruned_llava_at_the_answer():
  cfg, model, images, prefix, suffix, lens = _case()
  inputs = llava_pruned_inputs(
    model, images, *map(jnp.asarray, (prefix, suffix, lens))
  )
  n = cfg.num_image_tokens
  np.testing.assert_array_equal(inputs.query_index[:, 0], [5, 3])
  out = pruned_forward(model.lm, inputs, full_schedule(cfg.text.num_layers, n))
  got = jnp.take_along_axis(out.logits, inputs.query_index[..., None], axis=1)[
    :, 0
  ]  # [B, V]
  tokens, valid, answer = merged_prompt(
    prefix, suffix, lens, num_image=n, image_id=cfg.image_token_id
  )
  assert tokens.shape == (2, 2 + n + 5)
  want = model(jnp.asarray(tokens), images, jnp.asarray(valid)).logits
  want = want[np.arange(2), answer]  # [B, V]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@slow
def test_inputs_are_jittable_and_feed_a_pruned_schedule():
  cfg, model, images, prefix, suffix, lens = _case()
  n = cfg.num_image_tokens
  schedule = hidrop_from_stages(cfg.text.num_layers, n, 0, 2, (0,), (4,))

  @jax.jit
  def logits(images, prefix, suffix, lens):
    inputs = llava_pruned_inputs(model, images, prefix, suffix, lens)
    return pruned_forward(model.lm, inputs, schedule).logits

  out = logits(images, prefix, suffix, lens)
  assert out.shape == (2, 7, cfg.text.vocab_size)
  assert np.isfinite(np.asarray(out)).all()
