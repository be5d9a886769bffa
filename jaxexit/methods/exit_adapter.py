"""Exit adapters: one trained exit at a layer of a frozen decoder LM.

An adapter is a one-exit DYNAMAX `mlp` classifier (`jaxexit.methods.dynamax`:
RMSNorm → D→2D SiLU → 2D→D residual, output zero-initialised, then the
backbone's frozen final norm + LM head) trained by distillation to the
final layer alone, KL(p_L ‖ p_E) with no CE and no score term: LayerSkip's
early-exit loss without continual pre-training (spec `llm_exits.md` §5.3,
§3.2). Training reads hidden states cached once
(`dynamax_train.exit_features`) and checkpoints with orbax under a workdir
(resumable); the checkpoints carry a fingerprint of the backbone's weights
and the training tokens, so an adapter of another backbone is refused on
resume (`FingerprintMismatch`).

Used for drafting (`benchmarks/exit_adapters.py`) and as CE-CoLLM's edge
exit (`experiments.ce_collm`).

Axes: n rows, T tokens, E exits, D width.
"""

import dataclasses
import os
import pathlib
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx

from jaxexit import checks
from jaxexit import train as train_lib
from jaxexit.data import text
from jaxexit.methods import dynamax_train
from jaxexit.methods.dynamax import ExitClassifierConfig, ExitClassifiers
from jaxexit.train.fingerprint import fingerprint_array


@dataclasses.dataclass(frozen=True)
class AdapterTraining:
  """How one adapter trains.

  Attributes:
    steps: optimiser steps (AdamW, warm-up 10 % then cosine).
    batch_size: rows per step.
    learning_rate: peak learning rate.
  """

  steps: int = 300
  batch_size: int = 4
  learning_rate: float = 1e-3

  def __post_init__(self):
    checks.positive_int("AdapterTraining.steps", self.steps)
    checks.positive_int("AdapterTraining.batch_size", self.batch_size)
    checks.in_range(
      "AdapterTraining.learning_rate",
      self.learning_rate,
      0.0,
      1.0,
      low_open=True,
    )


def text_rows(
  tokenizer,
  sources: Sequence[str],
  split: str,
  n: int,
  seq_len: int,
  *,
  seed: int,
  data_dir: str | os.PathLike | None = None,
) -> np.ndarray:
  """[n, seq_len] token rows packed from shuffled documents of `sources`.

  Documents (`jaxexit.data.text.lm_texts`) are shuffled by `seed`,
  tokenised and packed with BOS/EOS between them
  (`jaxexit.data.text.pack_documents`).
  """
  docs = text.lm_texts(sources, split=split, data_dir=data_dir)
  order = np.random.default_rng(seed).permutation(len(docs))
  packed = text.pack_documents(
    [tokenizer.encode(docs[i]) for i in order[: 4 * n]],
    seq_len,
    bos_id=tokenizer.bos_id,
    eos_id=tokenizer.eos_id,
  )
  if len(packed) < n:
    raise ValueError(
      f"only {len(packed)} rows of {seq_len} tokens from {list(sources)} "
      f"{split!r}; asked for n={n}"
    )
  return packed[:n]


def fingerprint(backbone, tokens: np.ndarray) -> dict[str, str]:
  """What an adapter's checkpoints are tied to: every backbone weight and
  the training tokens."""
  leaves = jax.tree.leaves(nnx.state(backbone, nnx.Param))
  return {
    "backbone": fingerprint_array(
      np.array([fingerprint_array(np.asarray(x)) for x in leaves])
    ),
    "tokens": fingerprint_array(np.asarray(tokens)),
  }


def one_exit(
  features: dynamax_train.ExitFeatures, index: int
) -> dynamax_train.ExitFeatures:
  """The features of exit `index` alone (hidden [n, T, 1, D])."""
  return dataclasses.replace(
    features, hidden=features.hidden[:, :, index : index + 1]
  )


def train_mlp_exits(
  backbone,
  features: dynamax_train.ExitFeatures,
  training: AdapterTraining,
  workdir: str | os.PathLike,
  fingerprint: dict,
  *,
  score_weight: float = 0.0,
  progress: bool | None = None,
) -> ExitClassifiers:
  """One `mlp` exit per exit of `features`, trained (or resumed).

  The loss is KL(p_L ‖ p_e) to the final layer, plus `score_weight` times
  the class-balanced BCE of each exit's linear consistency score
  (`dynamax_train.DynamaxLossConfig`); no CE.

  Args:
    backbone: the frozen `DecoderBackbone`.
    features: hidden [n, T, E, D] at the E exits.
    training: steps, batch size, learning rate (warm-up 10 %, cosine).
    workdir: the orbax checkpoint folder (resumable).
    fingerprint: what the checkpoints are tied to; a resume under another
      one raises `FingerprintMismatch` naming the field.
    score_weight: weight of the score BCE (0: the scores stay untrained).
    progress: progress bar (None: when attached to a terminal).

  Returns:
    The trained E-exit `ExitClassifiers`.
  """
  heads = ExitClassifiers(
    ExitClassifierConfig(
      kind="mlp", num_exits=features.hidden.shape[2], d_model=backbone.d_model
    ),
    rngs=nnx.Rngs(0),
  )
  heads, _ = dynamax_train.train_exit_classifiers(
    backbone,
    heads,
    features,
    optim=train_lib.OptimConfig(
      learning_rate=training.learning_rate,
      schedule="warmup_cosine",
      warmup_steps=max(training.steps // 10, 1),
      total_steps=training.steps,
    ),
    num_steps=training.steps,
    batch_size=training.batch_size,
    workdir=pathlib.Path(workdir),
    weights=dynamax_train.DynamaxLossConfig(
      ce_weight=0.0, kl_weight=1.0, score_weight=score_weight
    ),
    checkpoint_every=max(training.steps // 4, 1),
    progress=progress,
    fingerprint=fingerprint,
  )
  return heads


def train_exit_adapter(
  backbone,
  features: dynamax_train.ExitFeatures,
  layer: int,
  training: AdapterTraining,
  workdir: str | os.PathLike,
  tied_to: dict[str, str],
  *,
  progress: bool | None = None,
) -> ExitClassifiers:
  """A one-exit `mlp` adapter at `layer`, trained (or resumed) by KL alone.

  Args:
    backbone: the frozen `DecoderBackbone`.
    features: one exit's features (`one_exit`), taken after `layer` blocks.
    layer: the exit layer (names the checkpoint folder `exit{layer}`).
    training: steps, batch size, learning rate.
    workdir: checkpoints go to `workdir/exit{layer}`.
    tied_to: `fingerprint(backbone, tokens)`; stored with the
      checkpoints, and a resume under another one raises
      `FingerprintMismatch` naming the field.
    progress: progress bar (None: when attached to a terminal).

  Returns:
    The trained adapter.
  """
  if features.hidden.shape[2] != 1:
    raise ValueError(
      f"features hold {features.hidden.shape[2]} exits; pass one_exit(...)"
    )
  return train_mlp_exits(
    backbone,
    features,
    training,
    pathlib.Path(workdir) / f"exit{layer}",
    dict(tied_to, exit_layer=layer, kind="mlp"),
    progress=progress,
  )


def agreement(
  backbone, adapter: ExitClassifiers, features: dynamax_train.ExitFeatures
) -> tuple[float, float]:
  """Top-1 agreement with the final layer on one exit's `features`:
  (the shared head alone, the trained adapter)."""
  fresh = ExitClassifiers(adapter.config, rngs=nnx.Rngs(0))
  return tuple(
    float(dynamax_train.exit_agreement(backbone, m, features)[0])
    for m in (fresh, adapter)
  )
