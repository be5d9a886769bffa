"""The `paper` preset: LLaVA-1.5-7B from a Hugging Face folder, on a mesh.

`prepare` runs before any data or weights are loaded:

1. the model is the `--model-dir` folder's config.json when it has one,
   else the preset's LLaVA-1.5-7B config (`folder_config`);
2. the per-device memory plan of a training step (every parameter in
   AdamW, float32, the preset's batch, no remat) on the run's mesh is
   printed, and the run refuses when a device cannot hold it
   (`experiments.memory_check`);
3. the folder is needed from here on (`require_model_dir` names what is
   missing): its tokenizer maps the VQA sets to LLaVA's prompt
   (`LlavaPrompts`) and its weights initialise every method
   (`init_model`, read afresh per method: training consumes the arrays).

Prompt: LLaVA-1.5's v1 conversation template as llava-hf's processor lays
it out, the image tokens in place of `<image>`:

  <s> SYSTEM USER: | N image tokens | \\n QUESTION \\n INSTRUCTION ASSISTANT:

The answer is read at the last suffix token (":" of "ASSISTANT:"), as the
first non-blank token of "ASSISTANT: ANSWER" after the cue (LLaVA's
tokenizer writes " 2" as "▁", "2": the "2" is the answer token); answer
words must get distinct tokens. Every row is padded to `TEXT_TOKENS`
text positions, the length the memory plan counts.
"""

import dataclasses
import pathlib
from collections.abc import Callable

import numpy as np

from experiments import memory_check
from experiments.hidrop import run
from experiments.hidrop.configs import Config
from jaxexit.data import VQASet
from jaxexit.models.hf_weights import read_hf_config
from jaxexit.models.llava import LLAVA_CONFIGS, LlavaConfig, LlavaLM
from jaxexit.models.llava_weights import llava_from_pretrained
from jaxexit.sharding.memory_plan import Workload
from jaxexit.sharding.workloads import llava_train_workload

SYSTEM = (
  "A chat between a curious human and an artificial intelligence "
  "assistant. The assistant gives helpful, detailed, and polite answers "
  "to the human's questions."
)
INSTRUCTION = "Answer the question using a single word or phrase."
CUE = "ASSISTANT:"
# Text positions per row (prefix + suffix; LLaVA's tokenizer: about 40 +
# 30 on the VQA sets' longest question).
TEXT_TOKENS = 96
# What `--model-dir` must hold.
FOLDER_FILES = ("config.json", "tokenizer.json")


def folder_config(cfg: Config, model_dir) -> Config:
  """`cfg` with the model of `model_dir/config.json` (when there is one)
  and scenes rendered at its vision tower's image size."""
  if (
    model_dir is None or not (pathlib.Path(model_dir) / "config.json").exists()
  ):
    return cfg
  model = LlavaConfig.from_hf(read_hf_config(model_dir))
  shapes = dataclasses.replace(cfg.shapes, image_size=model.vision.image_size)
  return dataclasses.replace(cfg, model=model, shapes=shapes)


def workload(cfg: Config, text_tokens: int = TEXT_TOKENS) -> Workload:
  """The memory `Workload` of one training step of the `paper` run."""
  text = cfg.model.text
  name = f"LLaVA ({text.num_layers} layers, d={text.d_model})"
  if cfg.model == LLAVA_CONFIGS["llava-1.5-7b"]:
    name = "LLaVA-1.5-7B"
  return llava_train_workload(
    cfg.model,
    run.optimizer(cfg),
    batch=cfg.batch_size,
    text_tokens=text_tokens,
    name=f"hidrop paper: {name}",
  )


def require_model_dir(model_dir) -> pathlib.Path:
  """The `--model-dir` folder, or a ValueError naming what is missing."""
  need = (
    "--preset paper needs --model-dir: a Hugging Face LLaVA folder (e.g. "
    f"llava-hf/llava-1.5-7b-hf) with {', '.join(FOLDER_FILES)} and its "
    "*.safetensors weights"
  )
  if model_dir is None:
    raise ValueError(f"{need}; got none")
  folder = pathlib.Path(model_dir)
  missing = [f for f in FOLDER_FILES if not (folder / f).is_file()]
  if not any(folder.glob("*.safetensors")):
    missing.append("*.safetensors")
  if missing:
    raise ValueError(f"{need}; {folder} lacks {missing}")
  return folder


@dataclasses.dataclass(frozen=True)
class LlavaPrompts:
  """The VQA sets in LLaVA's tokens (module doc).

  Attributes:
    encode: text -> token ids, without special tokens.
    decode: token ids -> text.
    bos_id: the id that starts a prompt.
    text_tokens: text positions per row (prefix + padded suffix).
  """

  encode: Callable[[str], list[int]]
  decode: Callable[[list[int]], str]
  bos_id: int
  text_tokens: int = TEXT_TOKENS

  @classmethod
  def from_folder(cls, folder, text_tokens: int = TEXT_TOKENS):
    """Reads `tokenizer.json` and the BOS id of `config.json`."""
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(
      str(pathlib.Path(folder) / FOLDER_FILES[1])
    )
    hf = read_hf_config(folder)
    bos = (hf.get("text_config") or {}).get("bos_token_id")
    return cls(
      encode=lambda s: tok.encode(s, add_special_tokens=False).ids,
      decode=tok.decode,
      bos_id=hf.get("bos_token_id", 1) if bos is None else bos,
      text_tokens=text_tokens,
    )

  def prefix(self) -> list[int]:
    return [self.bos_id, *self.encode(f"{SYSTEM} USER:")]

  def answer_ids(self, words) -> dict[str, int]:
    """{answer word: its token} (module doc).

    Raises:
      ValueError: a word whose encoding after the cue is blank or does not
        start with the cue's, or words that share a token (naming them).
    """
    cue = self.encode(CUE)
    out = {}
    for word in words:
      ids = self.encode(f"{CUE} {word}")
      rest = [i for i in ids[len(cue) :] if self.decode([i]).strip()]
      if ids[: len(cue)] != cue or not rest:
        raise ValueError(
          f"answer {word!r}: {CUE!r} + the word encodes as {ids}, which is "
          f"not the cue's {cue} and a non-blank token"
        )
      out[word] = rest[0]
    shared = {}
    for word, i in out.items():
      shared.setdefault(i, []).append(word)
    clashes = [w for w in shared.values() if len(w) > 1]
    if clashes:
      raise ValueError(f"answers sharing their first token: {clashes}")
    return out

  def __call__(self, vset: VQASet) -> run.Batch:
    """The host batch of `run.prompt_batch`, in LLaVA's tokens.

    Raises:
      ValueError: a prompt longer than `text_tokens` (naming it), or
        answers `answer_ids` refuses.
    """
    prefix = self.prefix()
    width = self.text_tokens - len(prefix)
    texts = [
      " ".join(vset.question(i)).replace(" ?", "?") for i in range(len(vset))
    ]
    encoded = {
      t: self.encode(f"\n{t}\n{INSTRUCTION} {CUE}") for t in set(texts)
    }
    longest = max(encoded, key=lambda t: len(encoded[t]))
    if len(encoded[longest]) > width:
      raise ValueError(
        f"question {longest!r} takes {len(prefix)} + "
        f"{len(encoded[longest])} text tokens > text_tokens="
        f"{self.text_tokens}"
      )
    suffix = np.zeros((len(vset), width), np.int32)
    lens = np.zeros(len(vset), np.int32)
    for row, text in enumerate(texts):
      ids = encoded[text]
      suffix[row, : len(ids)], lens[row] = ids, len(ids)
    words = vset.vocab.words
    answers = self.answer_ids(sorted({words[i] for i in vset.answer_ids}))
    return {
      "images": vset.images,
      "prefix": np.tile(np.asarray(prefix, np.int32), (len(vset), 1)),
      "suffix": suffix,
      "suffix_lens": lens,
      "answer": np.array(
        [answers[words[i]] for i in vset.answer_ids], np.int32
      ),
      "qtype": vset.question_types.astype(np.int32),
    }


def init_model(cfg: Config, folder: pathlib.Path) -> LlavaLM:
  """The folder's weights in the config's dtypes."""
  text = cfg.model.text
  return llava_from_pretrained(
    folder, dtype=text.dtype, param_dtype=text.param_dtype
  )


def prepare(cfg: Config, args, log):
  """Steps 1-3 of the module doc.

  Returns:
    (config of the folder's model, `LlavaPrompts` for `run.prompt_batch`'s
    place, `init(cfg) -> LlavaLM` for `run.init_model`'s).

  Raises:
    MemoryPlanError: the mesh cannot hold a training step.
    ValueError: no usable `--model-dir`.
  """
  cfg = folder_config(cfg, args.model_dir)
  memory_check.check_memory(
    [workload(cfg)], memory_check.run_mesh(args), log=log
  )
  folder = require_model_dir(args.model_dir)
  prompts = LlavaPrompts.from_folder(folder)
  total = TEXT_TOKENS + cfg.num_vision
  if total > cfg.model.text.max_position:
    raise ValueError(
      f"{TEXT_TOKENS} text + {cfg.num_vision} image positions exceed the "
      f"model's max_position={cfg.model.text.max_position}"
    )
  log(f"paper: {folder}, prompts of {TEXT_TOKENS} text tokens")
  return cfg, prompts, lambda c: init_model(c, folder)
