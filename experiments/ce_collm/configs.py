"""Presets for `python -m experiments.ce_collm`.

  python -m experiments.ce_collm --preset smoke --out /tmp/ce_collm_smoke
  python -m experiments.ce_collm --preset cpu --out runs/ce_collm_cpu
  python -m experiments.ce_collm --preset cpu --theta 0.9 --rtt-ms 50 \\
      --bandwidth-mbit 20 --quant int8 --clients 8
  python -m experiments.ce_collm --preset paper --out runs/ce_collm_paper

`smoke`: the seeded random 4-block `tiny` Llama split at k=2, random
prompts, one network setting, an exit adapter trained for 40 steps on
random rows. Its exit head's probabilities sit near 1/V ≈ 0.01 (random
weights), so its θ sweep brackets that value.
`cpu`: SmolLM2-135M-Instruct split at k=15 of 30, GSM8K and TruthfulQA
prompts (chat template), RTT 20 ms / 100 Mbit/s and 100 ms / 10 Mbit/s,
θ ∈ {1, 0.9, 0.8, 0.6, 0.4}, fp16 transport. The edge's exit head is
an `mlp` exit adapter at k trained by KL to the final layer on 1024 rows
of 64 tokens of GSM8K + CommonsenseQA training text (400 steps x 8
rows; `experiments.ce_collm.edge_head`); `--edge-head shared` uses the
backbone's own final norm + LM head on the layer-k state instead.
`paper`: LLaMA-2-7B split after layer 16 of 32 (the third-party
re-implementation's split), θ ∈ {0.8, 0.9, 1.0}; it needs an
accelerator and weights not staged here, so the command writes the
config and prints a runbook only.
"""

import dataclasses

from jaxexit import checks
from jaxexit.methods.exit_adapter import AdapterTraining
from jaxexit.serve import wire

MODELS = ("tiny", "smollm2", "llama2-7b")
NUM_LAYERS = {"tiny": 4, "smollm2": 30, "llama2-7b": 32}
PROMPT_SETS = ("random", "gsm8k", "truthfulqa")
EDGE_HEADS = ("trained", "shared")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  """One run's settings.

  Attributes:
    model: one of `MODELS` (served by `jaxexit.serve.models`, except
      llama2-7b, which only the runbook uses).
    split_layer: k, 1 ≤ k ≤ L - 1: the edge runs blocks 1..k.
    thetas: θ sweep of the collaborative mode, each in [0, 1].
    naive_thetas: θ values of the naive scheme (no context manager).
    error_costs_s: latency-aware runs (θ = 1 floor, threshold min(1,
      1 − R / c) from the measured request time R; `jaxexit.serve.edge`),
      one per c in seconds.
    networks: (RTT ms, bandwidth Mbit/s) per network setting.
    quant: wire mode of the uploaded states (`wire.MODES`).
    prompt_sets: where prompts come from (`PROMPT_SETS`).
    prompts_per_set: prompts taken from each set (the first ones).
    max_prompt_tokens: longer prompts are cut to their last tokens.
    max_new_tokens: tokens per answer (greedy; stops at EOS).
    max_len: positions per session (prompt + answer).
    clients: edge clients of the load test (0: none).
    load_tokens: tokens per answer in the load test.
    comparable_quality: token agreement with cloud-only at or above
      which a collaborative θ counts as "comparable quality".
    deadline_s: deadline of every call, seconds.
    quant_probe_prompts: prompts of the transport-quantisation check.
    edge_head: "trained" (an exit adapter at k trained by KL to the
      final layer, `experiments.ce_collm.edge_head`) or "shared" (the
      backbone's own final norm + LM head at k).
    head_training: the adapter's steps, batch size and learning rate.
    head_rows, head_eval_rows, head_seq_len: its training and held-out
      text rows (tokens per row).
  """

  model: str
  split_layer: int
  thetas: tuple[float, ...]
  naive_thetas: tuple[float, ...]
  networks: tuple[tuple[float, float], ...]
  error_costs_s: tuple[float, ...] = ()
  quant: str = "fp16"
  prompt_sets: tuple[str, ...] = ("random",)
  prompts_per_set: int = 6
  max_prompt_tokens: int = 16
  max_new_tokens: int = 12
  max_len: int = 64
  clients: int = 0
  load_tokens: int = 8
  comparable_quality: float = 0.9
  deadline_s: float = 30.0
  quant_probe_prompts: int = 4
  edge_head: str = "trained"
  head_training: AdapterTraining = AdapterTraining()
  head_rows: int = 512
  head_eval_rows: int = 64
  head_seq_len: int = 64

  def __post_init__(self):
    checks.one_of("Config.model", self.model, MODELS)
    checks.one_of("Config.edge_head", self.edge_head, EDGE_HEADS)
    for name in ("head_rows", "head_eval_rows", "head_seq_len"):
      checks.positive_int(f"Config.{name}", getattr(self, name))
    check_split_layer(self.model, self.split_layer)
    if not self.thetas:
      raise ValueError("Config.thetas must hold at least one θ")
    for t in (*self.thetas, *self.naive_thetas):
      check_theta(t)
    for c in self.error_costs_s:
      checks.in_range("error_cost_s", c, 0.0, 1e6, low_open=True)
    if not self.networks:
      raise ValueError("Config.networks must hold at least one setting")
    for rtt, bw in self.networks:
      checks.in_range("rtt_ms", rtt, 0.0, 1e5)
      checks.in_range("bandwidth_mbit", bw, 0.0, 1e6, low_open=True)
    checks.one_of("Config.quant", self.quant, wire.MODES)
    for name in self.prompt_sets:
      checks.one_of("Config.prompt_sets", name, PROMPT_SETS)
    for name in ("prompts_per_set", "max_prompt_tokens", "max_new_tokens"):
      checks.positive_int(f"Config.{name}", getattr(self, name))
    checks.positive_int("Config.clients", self.clients, minimum=0)
    checks.positive_int("Config.load_tokens", self.load_tokens)
    if self.max_prompt_tokens + self.max_new_tokens > self.max_len:
      raise ValueError(
        f"max_prompt_tokens={self.max_prompt_tokens} + max_new_tokens="
        f"{self.max_new_tokens} exceed max_len={self.max_len}"
      )
    if self.clients > 32:
      raise ValueError(f"clients={self.clients} must be at most 32")
    checks.in_range("comparable_quality", self.comparable_quality, 0.0, 1.0)

  @property
  def num_layers(self) -> int:
    return NUM_LAYERS[self.model]


def check_theta(theta: float) -> None:
  """Raises ValueError naming θ unless 0 ≤ θ ≤ 1."""
  checks.in_range("theta", theta, 0.0, 1.0)


def check_split_layer(model: str, k: int) -> None:
  """Raises ValueError naming k unless 1 ≤ k ≤ L - 1 for `model`."""
  from jaxexit.serve import split

  split.check_split(NUM_LAYERS[model], k)


PRESETS = {
  "smoke": Config(
    model="tiny",
    split_layer=2,
    thetas=(1.0, 0.0105, 0.0),
    naive_thetas=(0.0105,),
    networks=((20.0, 100.0),),
    error_costs_s=(1.0,),
    prompts_per_set=4,
    max_prompt_tokens=12,
    max_new_tokens=10,
    max_len=64,
    load_tokens=6,
    deadline_s=20.0,
    head_training=AdapterTraining(steps=40, batch_size=8, learning_rate=3e-3),
    head_rows=64,
    head_eval_rows=16,
    head_seq_len=32,
  ),
  "cpu": Config(
    model="smollm2",
    split_layer=15,
    thetas=(1.0, 0.9, 0.8, 0.6, 0.4),
    naive_thetas=(0.8,),
    networks=((20.0, 100.0), (100.0, 10.0)),
    error_costs_s=(0.5,),
    prompt_sets=("gsm8k", "truthfulqa"),
    prompts_per_set=8,
    max_prompt_tokens=192,
    max_new_tokens=32,
    max_len=256,
    load_tokens=8,
    deadline_s=60.0,
    head_training=AdapterTraining(steps=400, batch_size=8, learning_rate=1e-3),
    head_rows=1024,
  ),
  "paper": Config(
    model="llama2-7b",
    split_layer=16,
    thetas=(1.0, 0.9, 0.8),
    naive_thetas=(0.8,),
    networks=((20.0, 100.0), (50.0, 50.0), (100.0, 10.0)),
    prompt_sets=("gsm8k", "truthfulqa"),
    prompts_per_set=200,
    max_prompt_tokens=512,
    max_new_tokens=128,
    max_len=1024,
    clients=32,
    load_tokens=32,
    deadline_s=120.0,
  ),
}


def get_config(preset: str, **overrides) -> Config:
  """The preset, with fields replaced (validated again)."""
  checks.one_of("preset", preset, sorted(PRESETS))
  return dataclasses.replace(PRESETS[preset], **overrides)
