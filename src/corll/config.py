"""A run's settings and their scalar checks: the ground floor, importing nothing of corll above
`hardware` and no torch, so the CLI answers --help and names a bad option before any model loads.
Names that other rooms own (learners, tasks, models) are checked by `learners.registry.check`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from corll.hardware import PRECISIONS

DPO_LOSS_TYPES = ("sigmoid", "ipo")
EDITORS = ("local", "expert", "llm")


def parse_weights(spec: str) -> dict[str, float]:
    """'love=1,help=0.5,safe=0.5' -> {'love': 1.0, 'help': 0.5, 'safe': 0.5}; refuses negative or all-zero weights."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, value = part.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = math.nan
        if not sep or not name.strip() or math.isnan(weight):
            raise ValueError(f"--weights: {part!r} is not name=number")
        weights[name.strip()] = weight
    if not weights:
        raise ValueError("--weights: give at least one objective, e.g. love=1,help=0.5,safe=0.5")
    if any(w < 0 for w in weights.values()):
        raise ValueError(f"--weights must not be negative: {spec}")
    if all(w == 0 for w in weights.values()):
        raise ValueError(f"--weights are all zero: nothing to optimize ({spec})")
    return weights


@dataclass
class DPOConfig:
    """DPO settings. Paper: β=0.1, Adam, lr 1e-5 (full fine-tuning, IMDB) or 5e-7 with 10% warm-up (7B
    LoRA). With LoRA on a 135M model on CPU, lr 2e-4 to 5e-4 moves the policy within tens of steps."""

    beta: float = 0.1
    lr: float = 2e-4
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 10.0
    micro_batch_pairs: int = 4
    # Weight of the chosen response's per-token negative log-likelihood added to the DPO loss (0: plain
    # DPO). With few pairs whose chosen and rejected share most tokens (an edit and its draft), DPO
    # alone can lower the likelihood of both; the supervised term keeps the edit itself likely.
    sft_weight: float = 0.0


class ConfigError(ValueError):
    """An impossible setting, named by its option."""


@dataclass
class SimulationConfig:
    """Everything a run depends on. Values of the coactive-learning paper are noted where ours differ."""

    task: str = "positive-review"
    model: str = "smollm2-135m-instruct"
    algorithms: list[str] = field(default_factory=lambda: ["corll", "dueling"])
    rounds: int = 30
    seed: int = 0
    k: int = 2  # argmax samples; paper IMDB 9, 7B runs 1
    batch_size: int = 8  # N preferences per DPO step; paper 64
    user: str = "local"  # local: revises the draft (small edits); expert: the paper's expert-based editor; llm: prompted π_0
    l: int = 4  # expert candidates per edit; paper IMDB 25, 7B runs 5
    alpha: float | None = None  # None: minimal improvement; paper ablation 0.6
    noise_free: bool = False
    epsilon: float = 0.0
    weights: str = "love=1,help=0.5,safe=0.5"  # RLUF objectives (reaction tasks); k is its n samples per prompt
    beta: float = 0.1
    lr: float = 2e-4  # paper 1e-5 full fine-tuning; LoRA on 135M needs more (5e-4 over-optimizes in 30 rounds)
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    warmup_rounds: int = 0
    temperature: float = 1.0
    top_k: int = 50
    max_new_tokens: int = 32
    precision: str = "auto"  # auto: bf16 autocast where the hardware computes bf16 natively, else fp32
    full_finetune: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    init_adapter: str | None = None
    eval_every: int = 5
    eval_prompts: int = 16
    eval_samples: int = 2
    eval_argmax: bool = False  # also score each held-out sample's argmax-of-k twin (R* as CoRLL's users see it)
    checkpoint_every: int = 5
    offline_edits: int = 0  # learning from user edits: learn from this many logged edits of π_0's drafts first
    rank_agreement: bool = False  # CoRLL: log how the implicit-reward ranking of the k samples agrees with R*

    def dpo(self) -> DPOConfig:
        """The DPO update these settings ask for (the run's flat options are its fields, as the CLI names them)."""
        return DPOConfig(beta=self.beta, lr=self.lr, loss_type=self.loss_type, label_smoothing=self.label_smoothing,
                         warmup_steps=self.warmup_rounds)

    def validate(self) -> None:
        """Reject impossible values before any model loads, naming the option (names: `registry.check`)."""
        checks = [
            (self.rounds >= 1, "--rounds must be >= 1"),
            (self.k >= 1, "--k must be >= 1"),
            (self.batch_size >= 1, "--batch-size (N) must be >= 1"),
            (self.l >= 1, "--l must be >= 1"),
            (self.beta > 0, "--beta must be > 0"),
            (self.lr > 0, "--lr must be > 0"),
            (0.0 <= self.epsilon <= 1.0, "--epsilon must be in [0, 1]"),
            (self.alpha is None or 0.0 < self.alpha <= 1.0, "--alpha must be in (0, 1]"),
            (0.0 <= self.label_smoothing < 0.5, "--label-smoothing must be in [0, 0.5)"),
            (self.loss_type in DPO_LOSS_TYPES, f"--loss must be one of {', '.join(DPO_LOSS_TYPES)}"),
            (self.temperature > 0, "--temperature must be > 0"),
            (self.top_k >= 1, "--top-k must be >= 1"),
            (self.max_new_tokens >= 1, "--max-new-tokens must be >= 1"),
            (self.eval_every >= 1, "--eval-every must be >= 1"),
            (self.eval_prompts >= 1, "--eval-prompts must be >= 1"),
            (self.eval_samples >= 1, "--eval-samples must be >= 1"),
            (self.checkpoint_every >= 1, "--checkpoint-every must be >= 1"),
            (self.warmup_rounds >= 0, "--warmup-rounds must be >= 0"),
            (self.offline_edits >= 0, "--offline-edits must be >= 0"),
            (self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}"),
            (bool(self.algorithms), "--algorithm: give at least one"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.user not in EDITORS:
            raise ConfigError(f"unknown user {self.user!r}: use one of {', '.join(EDITORS)}")
        if len(set(self.algorithms)) != len(self.algorithms):
            raise ConfigError("--algorithm: each algorithm may be given once")
        if self.full_finetune and self.init_adapter:
            raise ConfigError("--init-adapter needs LoRA; it cannot be combined with --full-finetune")
        try:
            parse_weights(self.weights)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
