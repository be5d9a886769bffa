"""Presets for `python -m experiments.exit_selfimprove`.

  python -m experiments.exit_selfimprove --preset smoke --out /tmp/exit_smoke
  python -m experiments.exit_selfimprove --preset cpu --domain permsort
  python -m experiments.exit_selfimprove --preset cpu --domain knapsack \\
      --method curriculum,improve,diverge,exit
  python -m experiments.exit_selfimprove --preset paper --domain math

`smoke` proves the pipeline end to end in about a minute on 2 cores
(PermSort-6, 2 seeds, a short warm start, a few iterations). `cpu` is the
reproduction of spec `exploratory_iteration.md` §11.5 with the configuration
frozen before
any comparison: PermSort-8 with pointer output, a d=64 2-layer policy
warm-started for 800 SFT steps, G = 8, P = 64, Adam 1e-4, β = 0, one epoch,
N = 512, B_min = 128, p = 0.5, κ = 20, 200 iterations, 3 seeds vmapped; every
method compute-matched; K-step evaluation k = 0..16 on 256 held-out tasks,
avg@4 at temperature 1 and greedy. `paper` holds the paper's three LLM
configurations (Tables 4–6 of arXiv:2509.04575 v1, decoded in spec §5); they
need an LLM, its verifiers and accelerators, so `--preset paper` prints the
runbook instead of running.
"""

import dataclasses

from jaxexit.exploratory_iteration.buffer import BufferConfig
from jaxexit.exploratory_iteration.policy import PolicyConfig
from jaxexit.exploratory_iteration.train import METHODS
from jaxexit.rl.grpo import GRPOConfig

TOY_DOMAINS = ("permsort", "knapsack")
PAPER_DOMAINS = ("math", "tool_use", "mle_bench")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  """One run's settings.

  Attributes:
    domain: the synthetic domain (`TOY_DOMAINS`).
    domain_kwargs: its constructor arguments (e.g. list length n).
    methods: compared methods (keys of
    `jaxexit.exploratory_iteration.train.METHODS`).
    seeds: number of seeds, trained together (vmapped).
    policy: the policy sizes.
    sft_steps, sft_batch, sft_lr: supervised warm start (shared by every
      method of a seed).
    iterations, prompts, learning_rate: RL.
    grpo: G, epochs, clip, β, reference updates.
    buffer: N, B_min, p, κ, dedupe, score normalisation.
    p_div: divergence probability (diverge, exit).
    improve_reward: "quality" (math / tool-use convention) or
      "normalized_delta" (r_imp, MLE-bench convention).
    eval_tasks, eval_k, eval_samples: K-step evaluation on held-out tasks
      (avg@eval_samples at temperature 1, plus greedy).
    chunks: progress updates per training run.
  """

  domain: str = "permsort"
  domain_kwargs: tuple[tuple[str, object], ...] = (("n", 8),)
  methods: tuple[str, ...] = tuple(METHODS)
  seeds: int = 3
  policy: PolicyConfig = PolicyConfig()
  sft_steps: int = 800
  sft_batch: int = 256
  sft_lr: float = 2e-3
  iterations: int = 200
  prompts: int = 64
  learning_rate: float = 1e-4
  grpo: GRPOConfig = GRPOConfig()
  buffer: BufferConfig = BufferConfig()
  p_div: float = 0.2
  improve_reward: str = "quality"
  eval_tasks: int = 256
  eval_k: int = 16
  eval_samples: int = 4
  chunks: int = 10

  def __post_init__(self):
    if self.domain not in TOY_DOMAINS:
      raise ValueError(
        f"unknown Config.domain={self.domain!r}; expected "
        f"one of {list(TOY_DOMAINS)}"
      )
    bad = [m for m in self.methods if m not in METHODS]
    if bad or not self.methods:
      raise ValueError(
        f"Config.methods must be a non-empty subset of "
        f"{list(METHODS)}; got {self.methods!r}"
      )
    for name in (
      "seeds",
      "sft_steps",
      "iterations",
      "prompts",
      "eval_tasks",
      "eval_samples",
      "chunks",
    ):
      if not (
        isinstance(getattr(self, name), int) and getattr(self, name) >= 1
      ):
        raise ValueError(
          f"Config.{name} must be a positive int; got {getattr(self, name)!r}"
        )


PRESETS = {
  "smoke": Config(
    domain_kwargs=(("n", 6),),
    methods=("base", "grpo", "exit"),
    seeds=2,
    sft_steps=64,
    sft_batch=64,
    iterations=8,
    prompts=8,
    buffer=BufferConfig(capacity=64, min_fill=8),
    eval_tasks=32,
    eval_k=4,
    eval_samples=2,
    chunks=2,
  ),
  "cpu": Config(),
}

# The paper's LLM configurations (spec §5, Tables 4–6 of v1): documentation
# and the starting point of a port to an LLM trainer; not runnable here.
PAPER = {
  "math": dict(
    model="meta-llama/Llama-3.2-3B-Instruct",
    group_size=8,
    prompts_per_batch=128,
    epochs=1,
    clip_eps=0.2,
    beta=1e-3,
    ref_update_every=100,
    ref_alpha=1.0,
    learning_rate=1e-6,
    buffer_capacity=512,
    min_fill=128,
    replay_prob=0.5,
    p_div=0.2,
    loss_agg="seq_mean",
    reward="math-verify (binary)",
    eval="K=16, avg@8, MATH500/AMC/AIME/Minerva/OlympiadBench",
    paper_result="ExIt 20.4 ± 0.5 vs GRPO 18.7 ± 0.4 (all splits, K=16)",
  ),
  "tool_use": dict(
    model="Qwen/Qwen2.5-7B-Instruct",
    group_size=8,
    prompts_per_batch=16,
    epochs=2,
    clip_eps=0.2,
    beta="not reported (1e-3 assumed)",
    ref_update_every=100,
    ref_alpha=1.0,
    learning_rate=1e-6,
    buffer_capacity=640,
    min_fill=320,
    replay_prob=0.5,
    p_div=0.5,
    loss_agg="dr_grpo",
    reward="BFCLv3 multi-turn-base (binary)",
    eval="K=4, avg@8, first-turn accuracy",
    paper_result="ExIt 76.4 ± 1.0 vs GRPO 73.5 ± 1.5 (K=4)",
  ),
  "mle_bench": dict(
    model="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
    group_size=8,
    prompts_per_batch=4,
    epochs=1,
    clip_eps=0.2,
    beta="not reported (1e-3 assumed)",
    ref_update_every=100,
    ref_alpha=0.5,
    learning_rate=1e-6,
    buffer_capacity=24,
    min_fill=3,
    replay_prob=0.5,
    p_div=0.5,
    loss_agg="seq_mean",
    reward="normalised score; r_imp on improvement steps",
    eval="16 greedy-search steps, avg@16",
    paper_result="ExIt 58.6 ± 2.5 vs GRPO 48.0 ± 0.7 (16 steps)",
  ),
}

RUNBOOK = """\
Runbook: the paper preset needs an LLM policy, its verifier and
accelerators; none can run offline on this machine. To port a configuration:
  1. a rollout engine for the model (Tunix / vLLM) and a GRPO learner whose
     post-scoring hook calls jaxexit.exploratory_iteration (select_starts,
     update_buffer,
     diversity_coefficients, improvement_reward) on host-side task items;
  2. the domain's verifier (math-verify; BFCLv3 state + call-subsequence
     check; an MLE-bench sandbox with a 5-minute limit);
  3. the frozen embedder for the diversity bonus (a math BERT, or
     CodeXEmbed-400M for tool calls and code);
  4. the hyper-parameters below (spec exploratory_iteration.md §5).
"""


def get_config(preset: str = "cpu", **overrides) -> Config:
  """The named preset with `overrides` applied."""
  if preset not in PRESETS:
    raise ValueError(
      f"unknown preset={preset!r}; expected one of "
      f"{sorted(PRESETS) + ['paper']}"
    )
  return dataclasses.replace(PRESETS[preset], **overrides)
