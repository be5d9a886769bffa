"""The edge's exit head: the shared LM head, or an adapter trained for it.

`trained` (the default) trains a DYNAMAX `mlp` exit adapter at the split
layer k on the frozen backbone by distillation to the final layer
(`jaxexit.methods.exit_adapter`, the code the decoding benchmarks use), so
that the edge is confident where the full model agrees with it. SmolLM2
trains on GSM8K + CommonsenseQA training text and is checked on held-out
GSM8K test text; the random `tiny` model trains on random token rows.
`shared` is CALM's shared head: the backbone's final norm + LM head on the
layer-k state (`LMHeadExits`), untrained for layer k.
"""

import dataclasses
import pathlib

import numpy as np

from experiments.ce_collm.configs import Config
from jaxexit.data import text
from jaxexit.methods import dynamax_train, exit_adapter


@dataclasses.dataclass(frozen=True)
class EdgeHead:
  """The edge's exit head and what it was measured to do.

  Attributes:
    heads: `DecoderExitHeads` for `split.EdgeModel` (None: the shared
      head, `LMHeadExits`).
    kind: "shared" or "trained".
    agreement_before: held-out top-1 agreement of the shared head at k
      with the final layer (None when not measured).
    agreement_after: the same for the trained adapter.
    description: one line for logs and reports.
  """

  heads: object | None
  kind: str
  agreement_before: float | None = None
  agreement_after: float | None = None
  description: str = "shared LM head (untrained at k)"


def _rows(cfg: Config, vocab: int, tokenizer, split, n, seed, data_dir):
  if tokenizer is None:  # The random model: random token rows.
    return np.random.default_rng(seed).integers(0, vocab, (n, cfg.head_seq_len))
  sources = text.LM_SOURCES if split == "train" else ("gsm8k",)
  return exit_adapter.text_rows(
    tokenizer,
    sources,
    split,
    n,
    cfg.head_seq_len,
    seed=seed,
    data_dir=data_dir,
  )


def build(
  cfg: Config, backbone, tokenizer, workdir: pathlib.Path, data_dir, log
) -> EdgeHead:
  """The edge head `cfg.edge_head` asks for, trained (or resumed from
  `workdir`) when it is "trained"."""
  if cfg.edge_head == "shared":
    return EdgeHead(None, "shared")
  k = cfg.split_layer
  rows = lambda *a: _rows(cfg, backbone.vocab_size, tokenizer, *a, data_dir)  # noqa: E731
  train = rows("train", cfg.head_rows, 0)
  held = rows("test", cfg.head_eval_rows, 1)
  full = lambda rows: np.full(len(rows), rows.shape[1], np.int32)  # noqa: E731
  feats = [
    dynamax_train.exit_features(backbone, r, full(r), (k,), progress=False)
    for r in (train, held)
  ]
  adapter = exit_adapter.train_exit_adapter(
    backbone,
    feats[0],
    k,
    cfg.head_training,
    workdir,
    exit_adapter.fingerprint(backbone, train),
    progress=False,
  )
  before, after = exit_adapter.agreement(backbone, adapter, feats[1])
  t = cfg.head_training
  desc = (
    f"mlp exit adapter at k={k} trained by KL to the final layer "
    f"({t.steps} steps x {t.batch_size} rows of {cfg.head_seq_len} tokens); "
    f"held-out top-1 agreement with the final layer {before:.3f} (shared "
    f"head) -> {after:.3f}"
  )
  log(desc)
  return EdgeHead(adapter, "trained", before, after, desc)
