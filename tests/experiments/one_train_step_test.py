"""One training step of every experiment at every preset that trains here.

Each case builds the preset's model, loss and optimizer through the
experiment's own training function and runs it for a step or two on a
batch of synthetic examples (the real data only where the function reads
it itself), so a preset whose shapes, heads or optimizer groups do not fit
fails here in seconds instead of minutes into a run. Step counts are cut to
one (two where a warm-up cosine schedule needs a warm-up step shorter than
the run); nothing else of the preset changes. The `paper` presets need an
accelerator or model downloads: each experiment's own test checks their
configs.

Tiers (CPU seconds on 2 busy cores, mostly compiling): the smoke presets
of palbert_glue, the main job (~11 s), and dynamax's transformer (~6 s) are
the fast tier; dynamax's Mamba (~12 s) is the slow tier; HiDrop (~12
s), JEI-DNN's heads (~3 s), dynamic_perceiver's multi-exit CNN (~5-8 s)
and Dynamic Perceiver (~33 s; 2 min in a loaded CI run), ExIt's warm
start plus one iteration (~20 s) and every `cpu` preset (full-size
models) are the heavy tier (`--heavy`), to keep CI within its budget:
each experiment's smoke run, which CI runs, trains many such steps.
"""

import dataclasses
import math
import os
import pathlib

import jax
import numpy as np
import pytest

from jaxexit.data import ImageSplit
from tests.tiers import heavy, slow

DATA = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"
DATA_DIR = os.environ.get("JAXEXIT_DATA") or (
  str(DATA) if DATA.exists() else None
)
PRESETS = ["smoke", pytest.param("cpu", marks=heavy)]


def _finite(metrics: dict) -> None:
  assert metrics, "no training metrics were logged"
  for name, value in metrics.items():
    assert np.all(np.isfinite(np.asarray(value))), (name, value)


def _images(n: int, seed: int = 0) -> ImageSplit:
  rng = np.random.default_rng(seed)
  return ImageSplit(
    rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
    (np.arange(n) % 10).astype(np.int32),
    tuple(f"class{i}" for i in range(10)),
    None,
  )


@pytest.mark.parametrize("preset", PRESETS)
def test_palbert_glue(preset, tmp_path):
  from experiments.palbert_glue import configs, models, run
  from jaxexit.methods import encoder_exits

  cfg = configs.get_config(preset)
  encoder, _, pooling = models.load(cfg.model)
  method = encoder_exits.get_method("palbert")
  heads_cfg = dataclasses.replace(method.heads(2), pooling=pooling)
  n, width = cfg.batch_size, cfg.train_bucket_widths[0]
  rng = np.random.default_rng(0)
  ids = rng.integers(1000, 2000, (n, width)).astype(np.int32)
  data = run.Split(
    ids,
    np.zeros_like(ids),
    np.ones_like(ids),
    (np.arange(n) % 2).astype(np.int32),
  )
  # One epoch of one batch: one step per training stage.
  cfg = dataclasses.replace(cfg, epochs=1.0)
  assert run.num_steps(cfg, len(data)) == 1
  _, metrics = run.train_method(
    encoder, heads_cfg, method, data, cfg, 0, tmp_path, False
  )
  _finite(metrics)


@heavy
@pytest.mark.parametrize("preset", PRESETS)
def test_hidrop(preset, tmp_path):
  from experiments.hidrop import configs, run
  from jaxexit.pruning import make_schedule

  cfg = configs.get_config(preset)
  cfg = configs.get_config(
    preset, steps=2, warmup_steps=1, train_examples=cfg.batch_size
  )
  name = cfg.schedule_names("hidrop")[0]
  schedule = make_schedule(
    "hidrop", name, cfg.model.text.num_layers, cfg.num_vision
  )
  train_set = run.add_features(
    cfg,
    run.prompt_batch(run.load_split(cfg, "shapes", "train", None)),
    "train",
    progress=False,
  )
  _, metrics = run.train_method(
    cfg,
    run.init_model(cfg),
    schedule,
    train_set,
    tmp_path,
    impl="xla",
    progress=False,
  )
  _finite(metrics)


@heavy
@pytest.mark.parametrize("preset", PRESETS)
def test_jei_dnn(preset, tmp_path):
  from experiments.jei_dnn import configs, run
  from jaxexit.methods import jei_dnn

  base = configs.get_config(preset)
  jei = dataclasses.replace(base.jei, warmup_steps=1, steps=2)
  cfg = configs.get_config(
    preset, jei=jei, gammas=(base.default_gamma,), max_jei_train=None
  )
  rng = np.random.default_rng(0)
  n, gates, width = jei.batch_size, 4, 320
  feats = jei_dnn.CachedFeatures(
    rng.normal(size=(n, gates, width)).astype(np.float32),
    rng.normal(size=(n, 10)).astype(np.float32),
    rng.integers(0, 10, n).astype(np.int32),
  )
  split = {"train": feats, "val": feats}
  costs = np.array([0.2, 0.35, 0.65, 0.95, 1.0])
  warm, trained = run.train_seed(cfg, 0, split, costs, tmp_path, False)
  leaves = jax.tree.leaves((warm, trained))
  assert leaves and all(np.isfinite(np.asarray(x)).all() for x in leaves)


@heavy
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("method", ["dyn_perceiver", "multi_exit_cnn"])
def test_dynamic_perceiver(preset, method, tmp_path):
  from experiments.dynamic_perceiver import configs, run

  # The joint path trains here; the headline (frozen) path trains on cached
  # features and is covered by the dynamic_perceiver smoke test.
  cfg = configs.get_config(f"joint_{preset}", steps=2, warmup_steps=1)
  model = run.train_model(method, cfg, _images(cfg.batch_size), tmp_path, False)
  leaves = jax.tree.leaves(model)
  assert leaves and all(np.isfinite(np.asarray(x)).all() for x in leaves)


@pytest.mark.skipif(DATA_DIR is None, reason="no data dir with the text sets")
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize(
  "kind", ["transformer", pytest.param("mamba", marks=slow)]
)
def test_dynamax(preset, kind, tmp_path):
  from experiments.dynamax import backbones, configs

  spec = getattr(configs.get_config(preset), kind)
  if spec.source != "scratch":
    pytest.skip(
      f"the {preset} preset's {kind} is {spec.source}: not a from-scratch "
      "LM of its own (a distilled one is trained by dynamax_test's smoke "
      "run)"
    )
  spec = dataclasses.replace(spec, steps=2)
  backbone = backbones.load_backbone(
    kind,
    spec,
    out=tmp_path,
    data_dir=DATA_DIR,
    model_dir=None,
    seed=0,
    progress=False,
  )
  from jaxexit import train as train_lib

  loss = train_lib.read_metrics(tmp_path / kind / "lm" / "metrics.jsonl")
  assert loss and math.isfinite(loss[-1]["loss"]), loss
  assert backbone.model is not None


@heavy
@pytest.mark.parametrize("preset", PRESETS)
def test_exit_selfimprove(preset):
  from experiments.exit_selfimprove import configs
  from jaxexit.exploratory_iteration.domains import make_domain
  from jaxexit.exploratory_iteration.policy import policy_graphdef
  from jaxexit.exploratory_iteration.train import ExItConfig, seed_keys, train
  from jaxexit.exploratory_iteration.warm_start import warm_start

  cfg = configs.get_config(preset)
  domain = make_domain(cfg.domain, **dict(cfg.domain_kwargs))
  keys = seed_keys([0])
  warm, losses = warm_start(
    domain,
    cfg.policy,
    keys,
    steps=1,
    batch=cfg.sft_batch,
    lr=cfg.sft_lr,
    chunks=1,
    progress=False,
  )
  assert np.isfinite(np.asarray(losses)).all()
  run = ExItConfig(
    method="exit",
    iterations=1,
    prompts=cfg.prompts,
    grpo=cfg.grpo,
    learning_rate=cfg.learning_rate,
    buffer=cfg.buffer,
    p_div=cfg.p_div,
    improve_reward=cfg.improve_reward,
  )
  _, logs, _ = train(
    policy_graphdef(domain, cfg.policy),
    warm,
    keys,
    domain=domain,
    cfg=run,
    chunks=1,
    progress=False,
  )
  _finite(logs)
