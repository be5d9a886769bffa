import numpy as np
import pytest
from flax import nnx

from jaxexit.decoding.answers import cut_after, greedy_answers, pad_prompts
from jaxexit.decoding.full import generate_full
from jaxexit.models.llama import LlamaConfig, LlamaLM


def _model():
  return LlamaLM(
    LlamaConfig(
      vocab_size=16,
      d_model=16,
      num_layers=2,
      num_heads=4,
      num_kv_heads=2,
      mlp_hidden=32,
      max_position=64,
    ),
    rngs=nnx.Rngs(0),
  )


@pytest.mark.slow  # 16 s on 2 loaded cores: one compile per width
def test_batched_answers_equal_one_prompt_at_a_time():
  model = _model()
  rng = np.random.default_rng(0)
  prompts = [rng.integers(0, 16, n).tolist() for n in (3, 9, 1, 6, 12)]
  eos = 5
  got = greedy_answers(
    model, prompts, max_new_tokens=6, eos_id=eos, batch=2, bucket=4
  )
  for prompt, answer in zip(prompts, got):
    rows, lengths = pad_prompts([prompt], len(prompt))
    alone = np.asarray(
      generate_full(model, rows, lengths, max_new_tokens=6, eos_id=eos)
    )[0]
    assert answer == cut_after(alone, eos)
  # The reference is not vacuous: some answer stops at EOS, some runs on.
  assert any(a[-1] == eos and len(a) < 6 for a in got) or any(
    len(a) == 6 for a in got
  )


def test_cut_after_and_bad_prompts():
  assert cut_after([4, 2, 9, 2], 2) == [4, 2]
  assert cut_after([4, 9], 2) == [4, 9]
  assert cut_after([4, 2], None) == [4, 2]
  with pytest.raises(ValueError, match="width=3"):
    pad_prompts([[1, 2, 3, 4]], 3)
  with pytest.raises(ValueError, match="batch"):
    greedy_answers(_model(), [[1]], max_new_tokens=2, eos_id=None, batch=0)
