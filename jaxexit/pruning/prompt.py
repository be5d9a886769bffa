"""One-image prompts for the pruned forward: token ids -> `PrunedInputs`.

The unpruned sequence of a row is

  [prefix (P tokens) | N image tokens | suffix (S tokens, right-padded)]

with a fixed-length prefix (e.g. `<bos>` and system words) and a suffix
holding the instruction (e.g. a question followed by an answer cue such as
`<answer>`) whose valid length varies by row. The model answers at the LAST
valid suffix token, which is also the query row of the importance scores
(HiDrop / PyramidDrop / FastV rank vision tokens by the attention of the
last instruction token, spec `hidrop_pallas.md` §2.2 step 3).

Persistent position ids are those of the unpruned sequence: prefix
0..P-1, image P..P+N-1, suffix P+N+j, whatever the schedule later does
with the vision stream. `merged_prompt` builds the same example as one
token sequence with N image placeholders, for the unpruned LLaVA forward
(the reference of `llava_pruned_inputs` in the tests).

Axes: B batch, P prefix tokens, S suffix tokens, T = P + S text tokens,
N image tokens, D width, Q question words.
"""

import jax.numpy as jnp
import numpy as np

from jaxexit import checks
from jaxexit.models.llava import LlavaLM
from jaxexit.pruning.forward import PrunedInputs
from jaxexit.typing import Array, Float, Int


def question_suffix(
  question_ids: Int[np.ndarray, "B Q"],
  question_lens: Int[np.ndarray, "B"],
  *,
  cue_id: int,
  pad_id: int,
) -> tuple[np.ndarray, np.ndarray]:
  """Right-padded questions with the answer cue after each one.

  Args:
    question_ids: [B, Q] word ids, right-padded.
    question_lens: [B] valid words per row, in [1, Q].
    cue_id: the token the answer is predicted at (e.g. `<answer>`).
    pad_id: the padding id.

  Returns:
    (suffix [B, Q + 1] int32, suffix_lens [B] int32 = question_lens + 1).

  Raises:
    ValueError: mismatched rows or lengths outside [1, Q].
  """
  question_ids = np.asarray(question_ids, np.int32)
  lens = np.asarray(question_lens, np.int32)
  if question_ids.ndim != 2 or lens.shape != question_ids.shape[:1]:
    raise ValueError(
      f"question_ids must be [B, Q] and question_lens [B]; "
      f"got question_ids.shape={question_ids.shape}, "
      f"question_lens.shape={lens.shape}"
    )
  b, q = question_ids.shape
  if b and (lens.min() < 1 or lens.max() > q):
    raise ValueError(
      f"question_lens must lie in [1, Q={q}]; got range "
      f"[{lens.min()}, {lens.max()}]"
    )
  suffix = np.full((b, q + 1), pad_id, np.int32)
  suffix[:, :q] = np.where(np.arange(q) < lens[:, None], question_ids, pad_id)
  suffix[np.arange(b), lens] = cue_id
  return suffix, lens + 1


def prompt_positions(
  prefix_len: int, num_image: int, suffix_len: int
) -> tuple[np.ndarray, np.ndarray]:
  """Persistent ids: (text [P + S] int32, vision [N] int32)."""
  checks.positive_int("prefix_len", prefix_len, minimum=0)
  checks.positive_int("num_image", num_image)
  checks.positive_int("suffix_len", suffix_len)
  text = np.concatenate(
    [np.arange(prefix_len), prefix_len + num_image + np.arange(suffix_len)]
  )
  vision = prefix_len + np.arange(num_image)
  return text.astype(np.int32), vision.astype(np.int32)


def make_pruned_inputs(
  prefix_emb: Float[Array, "B P D"],
  suffix_emb: Float[Array, "B S D"],
  suffix_lens: Int[Array, "B"],
  vision_emb: Float[Array, "B N D"],
) -> PrunedInputs:
  """`PrunedInputs` of the layout above (jittable; shapes are static).

  Args:
    prefix_emb: [B, P] embedded prefix tokens (P may be 0).
    suffix_emb: [B, S] embedded suffix tokens, right-padded.
    suffix_lens: [B] valid suffix tokens per row, in [1, S] (not checked
      under jit; a row of length 0 would query its last prefix token).
    vision_emb: [B, N, D] projector outputs.

  Returns:
    Text stream [prefix | suffix], one query row per example (the last
    valid suffix token), persistent ids.
  """
  b, p, _ = prefix_emb.shape
  s, n = suffix_emb.shape[1], vision_emb.shape[1]
  text_pos, vision_pos = prompt_positions(p, n, s)
  lens = jnp.asarray(suffix_lens, jnp.int32)
  text_valid = jnp.concatenate(
    [jnp.ones((b, p), bool), jnp.arange(s)[None, :] < lens[:, None]], axis=1
  )  # [B, T]
  return PrunedInputs(
    text_emb=jnp.concatenate([prefix_emb, suffix_emb], axis=1),
    text_pos=jnp.broadcast_to(jnp.asarray(text_pos), (b, p + s)),
    text_valid=text_valid,
    vision_emb=vision_emb,
    vision_pos=jnp.broadcast_to(jnp.asarray(vision_pos), (b, n)),
    query_index=(p + lens - 1)[:, None],
    query_valid=jnp.ones((b, 1), bool),
  )


def llava_pruned_inputs(
  model: LlavaLM,
  images: Float[Array, "B H W 3"],
  prefix_ids: Int[Array, "B P"],
  suffix_ids: Int[Array, "B S"],
  suffix_lens: Int[Array, "B"],
) -> PrunedInputs:
  """Embeds the prompt and the image of a `LlavaLM` (jittable).

  Args:
    model: the multimodal LM; `pruned_forward(model.lm, ...)` runs it.
    images: [B, H, W, 3] normalised pixels.
    prefix_ids: [B, P] token ids before the image.
    suffix_ids: [B, S] right-padded token ids after it.
    suffix_lens: [B] valid suffix tokens.
  """
  embed = model.lm.embed
  return make_pruned_inputs(
    embed(prefix_ids),
    embed(suffix_ids),
    suffix_lens,
    model.image_embeddings(images),
  )


def merged_prompt(
  prefix_ids: Int[np.ndarray, "B P"],
  suffix_ids: Int[np.ndarray, "B S"],
  suffix_lens: Int[np.ndarray, "B"],
  *,
  num_image: int,
  image_id: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The same prompt as one sequence with `num_image` placeholders.

  Returns:
    (tokens [B, P + N + S] int32, valid [B, P + N + S] bool, answer_index
    [B] int32: the row index of the last valid suffix token).
  """
  prefix_ids = np.asarray(prefix_ids, np.int32)
  suffix_ids = np.asarray(suffix_ids, np.int32)
  lens = np.asarray(suffix_lens, np.int32)
  b, p = prefix_ids.shape
  s = suffix_ids.shape[1]
  image = np.full((b, num_image), image_id, np.int32)
  tokens = np.concatenate([prefix_ids, image, suffix_ids], axis=1)
  valid = np.concatenate(
    [np.ones((b, p + num_image), bool), np.arange(s)[None, :] < lens[:, None]],
    axis=1,
  )
  return tokens, valid, (p + num_image + lens - 1).astype(np.int32)
