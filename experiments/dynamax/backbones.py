"""The two backbones of a DYNAMAX run, with their tokenizers and prompts.

`smollm2` loads SmolLM2-135M-Instruct from the offline GGUF (chat-templated
prompts); `scratch` trains a byte-level LM of the preset's architecture on
GSM8K + CommonsenseQA text (resuming from `<out>/<backbone>/lm`);
`pretrained` reads a Hugging Face folder (`--model-dir`: Mistral-7B or
Codestral-Mamba-7B for the paper preset); `distilled` is built by
`experiments.dynamax.distill` from the transformer backbone's answers.
"""

import dataclasses
import json
import pathlib
from collections.abc import Callable

import numpy as np
from flax import nnx

from experiments.dynamax.configs import BackboneSpec
from jaxexit.data import text
from jaxexit.models.llama import LlamaConfig, LlamaLM
from jaxexit.models.mamba import MambaLM
from jaxexit.train.lm import train_causal_lm


@dataclasses.dataclass(frozen=True)
class Backbone:
  """A loaded backbone and how to talk to it.

  Attributes:
    model: a `DecoderBackbone`.
    encode, decode: text ↔ ids.
    prompt: question → the prompt text the model answers.
    bos_id, eos_id: document separators (generation stops at `eos_id`).
    description: one line for the results.
    corpus: documents (ids of this model) its exit classifiers train on;
      None: GSM8K + CommonsenseQA text (`training_rows`).
  """

  model: nnx.Module
  encode: Callable[[str], list[int]]
  decode: Callable[[list[int]], str]
  prompt: Callable[[str], str]
  bos_id: int
  eos_id: int
  description: str
  corpus: list[list[int]] | None = None


def _qa_prompt(question: str) -> str:
  """The format of the training corpus (`jaxexit.data.text.lm_texts`)."""
  return f"Question: {question}\nAnswer:"


def training_rows(
  encode, bos_id: int, eos_id: int, seq_len: int, data_dir, seed: int
) -> np.ndarray:
  """Packed [n, seq_len] rows of the shuffled text corpus."""
  docs = text.lm_texts(data_dir=data_dir)
  order = np.random.default_rng(seed).permutation(len(docs))
  return text.pack_documents(
    [encode(docs[i]) for i in order], seq_len, bos_id=bos_id, eos_id=eos_id
  )


def feature_rows(bb: Backbone, seq_len: int, data_dir, seed: int) -> np.ndarray:
  """Packed [n, seq_len] rows of `bb.corpus` (shuffled), or of the text
  corpus when it has none."""
  if bb.corpus is None:
    return training_rows(
      bb.encode, bb.bos_id, bb.eos_id, seq_len, data_dir, seed
    )
  order = np.random.default_rng(seed).permutation(len(bb.corpus))
  return text.pack_documents(
    [bb.corpus[i] for i in order], seq_len, bos_id=bb.bos_id, eos_id=bb.eos_id
  )


def _train_scratch(
  kind: str,
  spec: BackboneSpec,
  workdir: pathlib.Path,
  data_dir,
  seed: int,
  progress,
) -> tuple[nnx.Module, str]:
  tok = text.ByteTokenizer()
  rows = training_rows(
    tok.encode, tok.bos_id, tok.eos_id, spec.seq_len, data_dir, seed
  )
  cls = LlamaLM if isinstance(spec.arch, LlamaConfig) else MambaLM
  model, loss = train_causal_lm(
    cls(spec.arch, rngs=nnx.Rngs(seed)),
    rows,
    steps=spec.steps,
    batch_size=spec.batch_size,
    learning_rate=spec.learning_rate,
    workdir=workdir,
    seed=seed,
    progress=progress,
  )
  return model, (
    f"{cls.__name__} trained from scratch ({spec.arch.num_layers}"
    f" blocks, d={spec.arch.d_model}, byte tokens) for "
    f"{spec.steps} steps of {spec.batch_size}x{spec.seq_len}; "
    f"final train loss {loss:.3f} nats/byte"
  )


def _pretrained(kind: str, model_dir) -> Backbone:
  import tokenizers
  from jaxexit.models.llama_weights import llama_from_pretrained
  from jaxexit.models.mamba_weights import mamba_from_pretrained

  if model_dir is None:
    raise ValueError(
      f"the {kind} backbone of this preset is a Hugging Face "
      "checkpoint: pass --model-dir <folder>"
    )
  folder = pathlib.Path(model_dir)
  load = (
    llama_from_pretrained if kind == "transformer" else mamba_from_pretrained
  )
  model = load(folder)
  tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
  hf = json.loads((folder / "config.json").read_text())
  return Backbone(
    model=model,
    encode=lambda s: tok.encode(s).ids,
    decode=lambda ids: tok.decode(list(ids)),
    prompt=_qa_prompt,
    bos_id=hf.get("bos_token_id", 1),
    eos_id=hf.get("eos_token_id", 2),
    description=f"{type(model).__name__} from {folder}",
  )


def load_backbone(
  kind: str,
  spec: BackboneSpec,
  *,
  out: pathlib.Path,
  data_dir,
  model_dir,
  seed: int,
  progress,
) -> Backbone:
  """The `kind` ("transformer" / "mamba") backbone described by `spec`."""
  if spec.source == "smollm2":
    from jaxexit.models.gguf_weights import load_smollm2

    model, tok = load_smollm2()
    chat = lambda q: tok.apply_chat_template([{"role": "user", "content": q}])
    return Backbone(
      model=model,
      encode=tok.encode,
      decode=lambda ids: tok.decode(ids, skip_special_tokens=True),
      prompt=chat,
      bos_id=tok.bos_id,
      eos_id=tok.eos_id,
      description="SmolLM2-135M-Instruct (GGUF Q4_1 weights "
      "dequantised to float32; 30 blocks, d=576)",
    )
  if spec.source == "pretrained":
    return _pretrained(kind, model_dir)
  if spec.source == "distilled":
    raise ValueError(
      "a distilled backbone needs its teacher: build it with "
      "experiments.dynamax.distill.distilled_backbone"
    )
  model, description = _train_scratch(
    kind, spec, out / kind / "lm", data_dir, seed, progress
  )
  tok = text.ByteTokenizer()
  return Backbone(
    model=model,
    encode=tok.encode,
    decode=tok.decode,
    prompt=_qa_prompt,
    bos_id=tok.bos_id,
    eos_id=tok.eos_id,
    description=description,
  )
