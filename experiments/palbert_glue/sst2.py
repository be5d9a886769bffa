"""SST-2 from the GLUE TSV layout, tokenised by hashing words (demo only).

The PALBERT issue replaces this with the full GLUE loaders and WordPiece
tokenisers; the demo needs no vocabulary file, only the data dir.
"""

import csv
import zlib

import numpy as np

from jaxexit.data import require_file


def read_tsv(path) -> tuple[list[str], np.ndarray]:
  """(sentences, labels [N]) from a GLUE SST-2 TSV with a header."""
  sentences, labels = [], []
  with open(path, newline="") as f:
    reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(reader)
    if header[:2] != ["sentence", "label"]:
      raise ValueError(f"{path}: expected header 'sentence\\tlabel', got {header}")
    for line_no, row in enumerate(reader, start=2):
      if len(row) != 2 or row[1] not in ("0", "1"):
        raise ValueError(f"{path}:{line_no}: malformed SST-2 row {row!r}")
      sentences.append(row[0])
      labels.append(int(row[1]))
  return sentences, np.asarray(labels, np.int32)


def hash_tokens(sentences: list[str], vocab_size: int, max_len: int
                ) -> np.ndarray:
  """[N, max_len] int32 ids: [CLS]=1, words hashed into 2..V-1, 0 = padding."""
  out = np.zeros((len(sentences), max_len), np.int32)
  for i, s in enumerate(sentences):
    ids = [1] + [2 + zlib.crc32(w.encode()) % (vocab_size - 2)
                 for w in s.lower().split()]
    ids = ids[:max_len]
    out[i, :len(ids)] = ids
  return out


def load(split: str, vocab_size: int, max_len: int, data_dir=None):
  """(tokens [N, T], labels [N]) of SST-2 `split` ("train" or "dev")."""
  sentences, labels = read_tsv(require_file("sst2", split, data_dir=data_dir))
  return hash_tokens(sentences, vocab_size, max_len), labels
