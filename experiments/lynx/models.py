"""The LM of a LYNX run with its tokenizer, prompt format and exit cue.

`synthetic` trains the word-level reasoning LM from scratch (resuming from
`<out>/lm`); `smollm2` loads SmolLM2-135M-Instruct from the offline GGUF
(chat-templated prompts asking for a boxed answer); `qwen2` reads a Hugging
Face folder (`--model-dir`, DeepSeek-R1-Distill-Qwen-1.5B).
"""

import dataclasses
import json
import pathlib
from collections.abc import Callable

from flax import nnx

from experiments.lynx.configs import Config
from jaxexit.data import text
from jaxexit.data.synthetic_reasoning import (
  EXIT_CUE,
  WordTokenizer,
  make_problems,
)
from jaxexit.methods.lynx_cues import CueDetector
from jaxexit.models.llama import LlamaLM
from jaxexit.train.lm import train_causal_lm

# The synthetic LM's training problems come from this stream; probe,
# calibration and evaluation problems from others (never the same).
LM_STREAM, PROBE_STREAM, EVAL_STREAM = 0, 1, 2
_INSTRUCTION = (
  "Think step by step, then give the final answer as \\boxed{{answer}}.\n\n"
  "{question}"
)


@dataclasses.dataclass(frozen=True)
class LM:
  """A loaded LM and how LYNX talks to it.

  Attributes:
    model: a `LlamaLM`.
    encode: text -> ids (no special tokens added).
    decode: ids -> text (special tokens dropped).
    decode_token: id -> its piece on its own (the cue detector's view).
    prompt_ids: question -> the prompt's ids (BOS / chat template).
    eos_id: ends a trace.
    exit_text: the exit cue's text; exit_ids: pre-tokenised.
    stop_ids: answer tokens that end a forced answer.
    detector: the on-device cue detector for this tokenizer.
    description: one line for the results.
  """

  model: nnx.Module
  encode: Callable[[str], list[int]]
  decode: Callable[[list[int]], str]
  decode_token: Callable[[int], str]
  prompt_ids: Callable[[str], list[int]]
  eos_id: int
  exit_text: str
  exit_ids: tuple[int, ...]
  stop_ids: tuple[int, ...]
  detector: CueDetector
  description: str


def _synthetic(cfg: Config, out: pathlib.Path, progress) -> LM:
  tok = WordTokenizer(cfg.problems.max_value)
  if tok.vocab_size != cfg.lm.vocab_size:
    raise ValueError(
      f"the synthetic vocabulary has {tok.vocab_size} words at max_value="
      f"{cfg.problems.max_value}; Config.lm.vocab_size={cfg.lm.vocab_size}"
    )
  problems = make_problems(LM_STREAM, 0, cfg.lm_problems, cfg.problems)
  rows = text.pack_documents(
    [tok.encode(f"{p.question} {p.trace}") for p in problems],
    cfg.lm_seq_len,
    bos_id=tok.bos_id,
    eos_id=tok.eos_id,
  )
  model, loss = train_causal_lm(
    LlamaLM(cfg.lm, rngs=nnx.Rngs(cfg.lm_seed)),
    rows,
    steps=cfg.lm_steps,
    batch_size=cfg.lm_batch,
    learning_rate=cfg.lm_learning_rate,
    workdir=out / "lm",
    seed=cfg.lm_seed,
    progress=progress,
    fingerprint={"lm": cfg.lm, "problems": cfg.problems},
  )
  a = cfg.lm
  return LM(
    model=model,
    encode=tok.encode,
    decode=tok.decode,
    decode_token=tok.decode_token,
    prompt_ids=lambda q: [tok.bos_id, *tok.encode(q)],
    eos_id=tok.eos_id,
    exit_text=EXIT_CUE,
    exit_ids=tuple(tok.encode(EXIT_CUE)),
    stop_ids=(tok.encode("}")[0], tok.eos_id),
    detector=CueDetector.build(tok.decode_token, tok.vocab_size),
    description=(
      f"synthetic reasoning LM trained from scratch ({a.num_layers} blocks, "
      f"d={a.d_model}, {tok.vocab_size} word tokens) for {cfg.lm_steps} "
      f"steps of {cfg.lm_batch}x{cfg.lm_seq_len} on {cfg.lm_problems} "
      f"problems; final train loss {loss:.3f} nats/token"
    ),
  )


def _stop_ids(encode, eos_id: int) -> tuple[int, ...]:
  """Tokens whose text closes the box: "}" alone or with its neighbours."""
  return (*sorted({encode("}")[-1], encode(" }")[-1], encode("}.")[0]}), eos_id)


def _smollm2() -> LM:
  from jaxexit.models.gguf_weights import load_smollm2

  model, tok = load_smollm2()

  def prompt_ids(question: str) -> list[int]:
    chat = [{"role": "user", "content": _INSTRUCTION.format(question=question)}]
    return tok.encode(tok.apply_chat_template(chat))

  return LM(
    model=model,
    encode=tok.encode,
    decode=lambda ids: tok.decode(ids, skip_special_tokens=True),
    decode_token=lambda i: tok.decode([i]),
    prompt_ids=prompt_ids,
    eos_id=tok.eos_id,
    exit_text=EXIT_CUE,
    exit_ids=tuple(tok.encode(EXIT_CUE)),
    stop_ids=_stop_ids(tok.encode, tok.eos_id),
    detector=CueDetector.build(lambda i: tok.decode([i]), tok.vocab_size),
    description="SmolLM2-135M-Instruct (GGUF Q4_1 weights dequantised to "
    "float32; 30 blocks, d=576)",
  )


def _qwen2(model_dir) -> LM:
  import tokenizers

  from jaxexit.models.llama_weights import llama_from_pretrained

  if model_dir is None:
    raise ValueError(
      "--model qwen2 reads a Hugging Face folder: pass --model-dir "
      "<DeepSeek-R1-Distill-Qwen-1.5B folder>"
    )
  folder = pathlib.Path(model_dir)
  model = llama_from_pretrained(folder)
  tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
  hf = json.loads((folder / "config.json").read_text())
  encode = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
  bos = hf.get("bos_token_id")

  def prompt_ids(question: str) -> list[int]:
    # R1-Distill's chat template: <｜User｜>q<｜Assistant｜><think>\n
    body = f"<｜User｜>{_INSTRUCTION.format(question=question)}"
    ids = encode(body + "<｜Assistant｜><think>\n")
    return ([bos] if bos is not None else []) + ids

  eos = hf.get("eos_token_id")
  eos = eos[0] if isinstance(eos, list) else eos
  return LM(
    model=model,
    encode=encode,
    decode=lambda ids: tok.decode(list(ids), skip_special_tokens=True),
    decode_token=lambda i: tok.decode([i], skip_special_tokens=False),
    prompt_ids=prompt_ids,
    eos_id=eos,
    exit_text=EXIT_CUE,
    exit_ids=tuple(encode(EXIT_CUE)),
    stop_ids=_stop_ids(encode, eos),
    detector=CueDetector.build(
      lambda i: tok.decode([i], skip_special_tokens=False),
      tok.get_vocab_size(),
    ),
    description=f"{type(model).__name__} (Qwen2) from {folder}",
  )


def load_lm(cfg: Config, *, out: pathlib.Path, model_dir, progress) -> LM:
  """The run's LM (see the module doc)."""
  if cfg.model == "synthetic":
    return _synthetic(cfg, out, progress)
  if cfg.model == "smollm2":
    return _smollm2()
  return _qwen2(model_dir)


def problems_of(cfg: Config, name: str, stream: int, count: int, data_dir):
  """`count` problems of set `name` (synthetic: stream `stream`)."""
  if name == "synthetic":
    return make_problems(stream, 0, count, cfg.problems)
  from jaxexit.data.reasoning import load_problems

  split = "train" if stream == PROBE_STREAM else None
  return load_problems(name, split=split, data_dir=data_dir)[:count]
