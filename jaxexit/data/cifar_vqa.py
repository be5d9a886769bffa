"""CIFAR-10 images with templated classification questions, as a `VQASet`.

Each image gets one question; the two types are equally frequent:

  classify  "what is in the image ?"  -> the class name
  verify    "is this a <class> ?" ("an" before a vowel)  -> "yes" / "no"

Verify answers are half "yes" (the true class is named) and half "no" (a
uniformly drawn other class is named). Questions and answers use the shared
`VQAVocab`, so a model can be trained on CIFAR and on `shapes_vqa` at once.

Images stay 32x32 uint8: resizing all 10000 test images to 336x336 up front
would take 3.4 GB, so resize batches where they are used
(`jaxexit.data.resize`, in jit).

Axes: `B` examples, `H`, `W` image height and width, `Q` question words.
"""

import os

import numpy as np

from jaxexit import checks
from jaxexit.data import bundled
from jaxexit.data.cifar import ImageSplit, load_cifar
from jaxexit.data.vqa_set import QUESTION_LEN, VQASet
from jaxexit.data.vqa_vocab import NO, YES, VQAVocab, article

TYPE_NAMES = ("classify", "verify")
CLASSIFY = ("what", "is", "in", "the", "image", "?")


def cifar_vqa(
  split: ImageSplit, *, seed: int = 0, num_examples: int | None = None
) -> VQASet:
  """One question per image of a labelled split.

  Args:
    split: CIFAR-10 images and labels (class names must be vocabulary
      words, as CIFAR-10's are).
    seed: seed of the subset, the question types and the verify answers.
    num_examples: how many images to use, in [1, len(split)], drawn without
      replacement; None uses every image. Either way the examples come in a
      seeded random order (the CIFAR archive is sorted by class, so the
      first examples are a fair sample). For the bundled subset
      (`split.subset_of` set) a larger request, up to the full split's
      size, uses the whole subset and says so on stderr.

  Returns:
    A `VQASet` with `type_names` = `TYPE_NAMES` and no `scenes`.

  Raises:
    ValueError: a class name outside the vocabulary, fewer than 2 classes,
      a bad `num_examples`, or a negative seed.
  """
  vocab = VQAVocab()
  unknown = [c for c in split.class_names if c not in vocab.answers]
  if unknown:
    raise ValueError(
      f"class names {unknown} are not VQA answer words (only "
      f"CIFAR-10 classes are)"
    )
  num_classes = len(split.class_names)
  if num_classes < 2:
    raise ValueError(
      f"need at least 2 classes to ask 'is this a ...'; got "
      f"class_names={split.class_names}"
    )
  checks.positive_int("seed", seed, minimum=0)
  rng = np.random.default_rng(seed)
  if num_examples is None:
    num_examples = len(split)
  checks.positive_int("num_examples", num_examples)
  if split.subset_of is not None and len(split) < num_examples <= (
    split.subset_of
  ):
    bundled.notice(
      f"cifar10: num_examples={num_examples} exceeds the {len(split):,}-"
      f"image bundled subset; using all {len(split):,}"
    )
    num_examples = len(split)
  checks.in_range("num_examples", num_examples, 1, len(split))
  idx = rng.permutation(len(split))[:num_examples]
  labels = split.labels[idx]
  qtype = rng.permutation(np.arange(num_examples) % 2)  # 1: verify
  yes = np.zeros(num_examples, bool)
  verify = np.flatnonzero(qtype == 1)
  yes[verify] = rng.permutation(np.arange(len(verify)) % 2) == 0
  other = (labels + rng.integers(1, num_classes, num_examples)) % num_classes
  named = np.where(yes, labels, other)
  questions, answers = [], []
  for t, label, name, y in zip(qtype, labels, named, yes):
    if t == 0:
      questions.append(CLASSIFY)
      answers.append(split.class_names[label])
    else:
      word = split.class_names[name]
      questions.append(["is", "this", article(word), word, "?"])
      answers.append(YES if y else NO)
  question_ids, question_lens = vocab.encode_padded(questions, QUESTION_LEN)
  return VQASet(
    split.images[idx],
    question_ids,
    question_lens,
    vocab.encode(answers),
    qtype.astype(np.int32),
    TYPE_NAMES,
    vocab,
  )


def load_cifar_vqa(
  split: str = "test",
  *,
  seed: int = 0,
  num_examples: int | None = None,
  data_dir: str | os.PathLike | None = None,
  cache_dir: str | os.PathLike | None = None,
  source: str = "auto",
  use_bundled: bool = True,
) -> VQASet:
  """Loads a CIFAR-10 split and asks one question per image.

  Args:
    split: "train" or "test".
    seed: as in `cifar_vqa`.
    num_examples: as in `cifar_vqa`.
    data_dir: the jaxexit data dir (None: `$JAXEXIT_DATA`, then the
      default); see `jaxexit.data.load_cifar`.
    cache_dir: as in `jaxexit.data.load_cifar`.
    source: as in `jaxexit.data.load_cifar`.
    use_bundled: as in `jaxexit.data.load_cifar`.

  Returns:
    The `VQASet` of `cifar_vqa`.

  Raises:
    The errors of `load_cifar` (e.g. `DataNotFoundError`) and `cifar_vqa`.
  """
  data = load_cifar(
    "cifar10",
    split,
    data_dir=data_dir,
    cache_dir=cache_dir,
    source=source,
    use_bundled=use_bundled,
  )
  return cifar_vqa(data, seed=seed, num_examples=num_examples)
