"""HiDrop's `paper` preset: memory plan, refusal, LLaVA prompts, and a run
with a tiny LLaVA folder standing in for LLaVA-1.5-7B (nothing downloaded).
"""

import copy
import dataclasses
import json
import re

import numpy as np
import pytest
from flax import nnx

from experiments import memory_check
from experiments.hidrop import __main__ as experiment
from experiments.hidrop import configs, paper
from jaxexit.data import ShapesVQAConfig, VQAVocab, make_shapes_vqa
from jaxexit.models.llava import LlavaConfig, LlavaLM
from jaxexit.models.llava_weights import export_llava_state_dict
from jaxexit.sharding.memory_plan import MemoryPlanError
from tests.jaxexit.models.llava_test import LLAVA_15_7B_JSON
from tests.tiers import slow

_WORDS = re.compile(r"\w+|[^\w\s]+")  # the Whitespace pre-tokenizer's


def _device_gib(monkeypatch, gib):
  monkeypatch.setattr(
    memory_check, "device_memory_bytes", lambda devices=None: int(gib * 2**30)
  )


@slow  # two abstract 7B models, ~10 s alone
def test_paper_preset_plans_then_refuses_or_needs_the_model_dir(
  tmp_path, monkeypatch, capsys
):
  _device_gib(monkeypatch, 16)  # one fake 16 GiB device
  with pytest.raises(MemoryPlanError, match=r"LLaVA-1.5-7B needs [\d,.]+ GiB"):
    experiment.main(["--preset", "paper", "--out", str(tmp_path / "a")])
  out = capsys.readouterr().out
  assert "memory plan per device: hidrop paper: LLaVA-1.5-7B" in out
  assert "does NOT fit" in out and "train step 16" in out
  _device_gib(monkeypatch, 4096)
  with pytest.raises(ValueError, match="needs --model-dir.*got none"):
    experiment.main(["--preset", "paper", "--out", str(tmp_path / "b")])
  assert "fits" in capsys.readouterr().out
  with pytest.raises(ValueError, match=r"lacks \['config.json', 'tok"):
    experiment.main(
      ["--preset", "paper", "--out", str(tmp_path / "c")]
      + ["--model-dir", str(tmp_path)]
    )


class _Pieces:
  """A fake sentencepiece-like tokenizer: " 2" is "▁", "2"."""

  def __init__(self):
    self.vocab = {"<s>": 0, "▁": 1}

  def encode(self, text):
    ids = []
    for word in _WORDS.findall(text):
      pieces = ["▁", word] if word.isdigit() else [word]
      ids += [self.vocab.setdefault(p, len(self.vocab)) for p in pieces]
    return ids

  def decode(self, ids):
    names = {i: p for p, i in self.vocab.items()}
    return " ".join(names[i] for i in ids).replace("▁", " ")


def test_prompts_skip_blank_answer_tokens_and_refuse_clashes():
  pieces = _Pieces()
  prompts = paper.LlavaPrompts(pieces.encode, pieces.decode, bos_id=0)
  ids = prompts.answer_ids(["2", "3", "red"])
  assert ids == {w: pieces.vocab[w] for w in ("2", "3", "red")}
  vset = make_shapes_vqa(ShapesVQAConfig(image_size=32, grid=3), 6, 0)
  batch = prompts(vset)
  assert batch["prefix"].shape == (6, len(prompts.prefix()))
  assert batch["prefix"][:, 0].tolist() == [0] * 6
  assert batch["prefix"].shape[1] + batch["suffix"].shape[1] == 96
  words = vset.vocab.words
  for row in range(6):
    n = batch["suffix_lens"][row]
    text = pieces.decode(batch["suffix"][row, :n].tolist())
    question = " ".join(vset.question(row)).replace(" ?", "?")
    assert text.replace(" ", "") == (
      question + paper.INSTRUCTION + paper.CUE
    ).replace(" ", ""), text
    assert np.all(batch["suffix"][row, n:] == 0)  # padding
    assert batch["answer"][row] == pieces.vocab[words[vset.answer_ids[row]]]
  clash = paper.LlavaPrompts(
    lambda s: [7] * len(_WORDS.findall(s)), lambda ids: "x", bos_id=0
  )
  with pytest.raises(ValueError, match=r"sharing their first token.*'red'"):
    clash.answer_ids(["red", "green"])
  short = dataclasses.replace(prompts, text_tokens=50)
  with pytest.raises(ValueError, match="text tokens > text_tokens=50"):
    short(vset)


def _tiny_llava_folder(folder):
  """config.json, tokenizer.json and model.safetensors of a random tiny
  LLaVA (4 Llama layers, 16 image tokens) and a word-level tokenizer
  knowing every word of the prompts."""
  from safetensors.numpy import save_file
  from tokenizers import Tokenizer, models, pre_tokenizers

  hf = copy.deepcopy(LLAVA_15_7B_JSON)
  hf["image_token_index"] = 255
  hf["vision_config"].update(
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
  )
  hf["text_config"].update(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    vocab_size=256,
    bos_token_id=1,
  )
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps(hf))
  cfg = LlavaConfig.from_hf(hf)
  state = export_llava_state_dict(LlavaLM(cfg, rngs=nnx.Rngs(0)))
  save_file(state, str(folder / "model.safetensors"), {"format": "pt"})
  text = " ".join(
    [paper.SYSTEM, "USER:", paper.INSTRUCTION, paper.CUE, *VQAVocab().words]
  )
  words = sorted(set(_WORDS.findall(text)))
  vocab = {"<unk>": 0, "<s>": 1} | {w: i + 2 for i, w in enumerate(words)}
  assert len(vocab) < 255
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.save(str(folder / "tokenizer.json"))
  return cfg


@slow
def test_paper_preset_runs_with_a_tiny_llava_folder(tmp_path, monkeypatch):
  cfg = _tiny_llava_folder(tmp_path / "llava")
  small = dataclasses.replace(
    configs.get_config("paper"),
    model=cfg,
    shapes=ShapesVQAConfig(
      image_size=32, grid=3, max_objects=3, object_scale=0.16
    ),
    hidrop_schedules=("tok64",),
    train_examples=64,
    test_examples=32,
    steps=3,
    batch_size=8,
    warmup_steps=1,
    eval_batch=32,
    timing_batch=8,
    timing_repeats=1,
  )
  monkeypatch.setitem(configs.PRESETS, "paper", small)
  _device_gib(monkeypatch, 1)  # the tiny model's plan fits in 1 GiB
  out = tmp_path / "out"
  experiment.main(
    ["--preset", "paper", "--model-dir", str(tmp_path / "llava")]
    + ["--out", str(out), "--method", "full,hidrop", "--no-progress"]
  )
  records = json.loads((out / "results.json").read_text())["records"]
  assert [r["method"] for r in records] == ["full", "hidrop", "constant"]
  for rec in records[:2]:
    assert 0 <= rec["accuracy"] <= 1 and rec["train_step_ms"] > 0
  # The prompts it trained on: the folder's tokens, answers included.
  vocab = json.loads((tmp_path / "llava" / "tokenizer.json").read_text())
  ids = vocab["model"]["vocab"]
  prompts = paper.LlavaPrompts.from_folder(tmp_path / "llava")
  vset = make_shapes_vqa(small.shapes, 8, 1)
  batch = prompts(vset)
  words = [vset.answer(i) for i in range(8)]
  assert batch["answer"].tolist() == [ids[w] for w in words]
  assert batch["prefix"][0, :3].tolist() == [1, ids["A"], ids["chat"]]
