"""Tiny `tokenizers` pipelines shaped like real checkpoints' tokenizer.json."""

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from tokenizers import processors


def albert_like(pieces: list[str]) -> Tokenizer:
  """ALBERT's shape: lowercase, SentencePiece Unigram, [CLS] a [SEP] b [SEP].

  `pieces` must start with "<pad>", "<unk>", "[CLS]", "[SEP]" (ids 0-3).
  """
  sp = Tokenizer(
    models.Unigram([(p, -1.0) for p in pieces], unk_id=1, byte_fallback=False)
  )
  sp.normalizer = normalizers.Lowercase()
  sp.pre_tokenizer = pre_tokenizers.Metaspace()
  sp.post_processor = processors.TemplateProcessing(
    single="[CLS] $A [SEP]",
    pair="[CLS] $A [SEP] $B:1 [SEP]:1",
    special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
  )
  return sp
