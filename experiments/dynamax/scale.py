"""What the `paper` preset needs at 7B: a memory plan, features on disk.

`workloads` describes a run for `experiments.memory_check` (frozen
backbone, each trained classifier kind in AdamW, the feature pass and the
classifier step; `jaxexit.methods.dynamax_plan`), from the `--model-dir`
folder's config.json when it has one, else from the published sizes of
DYNAMAX's backbones (Mistral-7B-v0.1, Codestral-Mamba-7B).
`training_features` runs the feature pass into host memory or, with
`feature_store="disk"`, into .npy shards (`jaxexit.methods.feature_shards`).
"""

import pathlib

import numpy as np

from experiments.dynamax.configs import Config
from jaxexit.methods import dynamax_train
from jaxexit.methods.dynamax import ExitClassifierConfig
from jaxexit.methods.dynamax_plan import kind_workloads
from jaxexit.methods.feature_shards import write_feature_shards
from jaxexit.models.hf_weights import read_hf_config
from jaxexit.models.llama import LlamaConfig
from jaxexit.models.llama_weights import LLAMA_CONFIGS
from jaxexit.models.mamba import MambaConfig
from jaxexit.models.mamba2 import MAMBA2_CONFIGS, Mamba2Config
from jaxexit.sharding.memory_plan import Workload
from jaxexit.train import OptimConfig, build_optimizer

# The `paper` backbones (spec llm_exits.md §3.1) by --backbone.
PAPER_BACKBONES = {
  "transformer": ("Mistral-7B", LLAMA_CONFIGS["mistral-7b-v0.1"]),
  "mamba": ("Codestral-Mamba-7B", MAMBA2_CONFIGS["codestral-mamba-7b"]),
}


def backbone_config(kind: str, model_dir) -> tuple[str, object]:
  """(name, config) of the `kind` backbone: the folder's config.json when
  `model_dir` has one, else `PAPER_BACKBONES[kind]`."""
  if (
    model_dir is None or not (pathlib.Path(model_dir) / "config.json").exists()
  ):
    return PAPER_BACKBONES[kind]
  hf = read_hf_config(model_dir)
  model_type = hf.get("model_type")
  cls = {"mamba": MambaConfig, "mamba2": Mamba2Config}.get(
    model_type, LlamaConfig
  )
  return pathlib.Path(model_dir).name, cls.from_hf(hf)


def classifier_config(
  cfg: Config, kind: str, num_exits: int, d_model: int
) -> ExitClassifierConfig:
  """The sizes of the `kind` exit classifiers of this run."""
  return ExitClassifierConfig(
    kind=kind,
    num_exits=num_exits,
    d_model=d_model,
    mlp_hidden=cfg.mlp_hidden,
    mamba_width=cfg.mamba_width,
    mamba_layers=cfg.mamba_layers,
  )


def optim_config(cfg: Config) -> OptimConfig:
  """The classifiers' optimizer (every kind alike)."""
  return OptimConfig(
    learning_rate=cfg.classifier_lr,
    schedule="warmup_cosine",
    warmup_steps=max(cfg.classifier_steps // 10, 1),
    total_steps=cfg.classifier_steps,
    grad_clip=1.0,
  )


def workloads(cfg: Config, kind: str, model_dir) -> list[Workload]:
  """One `Workload` per trained classifier kind of the `kind` backbone."""
  name, backbone = backbone_config(kind, model_dir)
  exits = cfg.exit_layers(backbone.num_layers)
  sizes = classifier_config(cfg, "mamba", len(exits), backbone.d_model)
  return kind_workloads(
    backbone,
    sizes,
    cfg.classifiers,
    build_optimizer(optim_config(cfg)),
    seq_len=cfg.feature_len,
    feature_batch=cfg.feature_batch,
    classifier_batch=cfg.classifier_batch,
    name=f"dynamax paper: {name}",
  )


def training_features(
  cfg: Config,
  backbone,
  rows: np.ndarray,
  exit_layers: tuple[int, ...],
  out: pathlib.Path,
  progress,
  tag: str = "",
) -> dynamax_train.ExitFeatures:
  """The frozen backbone's features of `rows` (full-length sequences), in
  memory or in shards under `out / "features"` (`cfg.feature_store`;
  `tag`, e.g. the backbone's description, keys the shards with it)."""
  lengths = np.full(len(rows), rows.shape[1])
  if cfg.feature_store == "memory":
    return dynamax_train.exit_features(
      backbone,
      rows,
      lengths,
      exit_layers,
      batch_size=cfg.feature_batch,
      progress=progress,
    )
  return write_feature_shards(
    backbone,
    rows,
    lengths,
    exit_layers,
    out / "features",
    batch_size=cfg.feature_batch,
    tag=tag,
    progress=progress,
  )
