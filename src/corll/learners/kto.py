"""KTO from reactions: a direct alternative to reward-model RL (the reactions paper's setting, Ethayarajh et al. 2024).

    for t = 1..T:
        show one sample y ~ π_t(·|x) per prompt; the user loves it or stays silent
        a love is a desirable example, silence an undesirable one
        every N examples: one Adam step on the KTO loss

Silence is weak evidence, and loves are rare; the desirable weight λ_D is set per
batch so that λ_D·(loves) = λ_U·(silences) (capped at `max_desirable_weight`), the
class balance KTO's authors recommend. z_0, the reference point, is the batch's
mean log π/π_0 over responses paired with other prompts' inputs (their mismatched
estimate of KL(π‖π_0)), detached.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from corll.learners.base import Defaults
from corll.learners.dpo import PolicyOptimizer, StepStats
from corll.learners.rounds import RoundLog
from corll.losses import kto_loss
from corll.policy import Policy
from corll.batches import sequence_logprobs
from corll.tasks import ReactFn


@dataclass
class KTOConfig:
    """KTO settings. Paper defaults: β = 0.1, λ_U = 1, λ_D chosen so λ_D·n_D / (λ_U·n_U) ∈ [1, 4/3]."""

    beta: float = 0.1
    lr: float = 2e-4
    undesirable_weight: float = 1.0
    max_desirable_weight: float = 20.0
    micro_batch: int = 4


@dataclass(frozen=True)
class Reaction:
    prompt: str
    response: str
    loved: bool


class KTOLearner:
    def __init__(self, policy: Policy, config: KTOConfig) -> None:
        self.policy, self.config = policy, config
        self.optim = PolicyOptimizer(policy, config.lr)

    def step(self, examples: Sequence[Reaction]) -> StepStats:
        if not examples:
            raise ValueError("a KTO step needs at least one example")
        cfg, n = self.config, len(examples)
        loves = sum(e.loved for e in examples)
        desirable_weight = min(cfg.max_desirable_weight, cfg.undesirable_weight * (n - loves) / max(loves, 1))
        prompts, responses = [e.prompt for e in examples], [e.response for e in examples]
        shifted = prompts[1:] + prompts[:1]  # each response under another prompt: the KL reference point
        z0 = (self.policy.logprobs(shifted, responses) - self.policy.logprobs(shifted, responses, reference=True)).mean()
        ref = self.policy.logprobs(prompts, responses, reference=True)
        total = 0.0
        self.optim.model.train()
        for start in range(0, n, cfg.micro_batch):
            part = slice(start, start + cfg.micro_batch)
            with self.policy.training_attention(), self.policy.autocast():
                logps = sequence_logprobs(self.optim.model, self.policy.encode(prompts[part], responses[part]))
            labels = torch.tensor([e.loved for e in examples[part]], device=self.policy.device)
            loss = kto_loss(logps, ref[part], labels, z0, beta=cfg.beta, desirable_weight=desirable_weight,
                            undesirable_weight=cfg.undesirable_weight).sum() / n
            self.optim.backward(loss, f"KTO loss on {n} examples")
            total += loss.item()
        return StepStats(loss=total, margin=float(z0), accuracy=loves / n, grad_norm=self.optim.apply("KTO"))

    def state_dict(self) -> dict:
        return self.optim.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optim.load_state_dict(state)


class KTOFromReactions(Defaults):
    """The round loop: one sample per prompt, shown to a reaction user, N examples per KTO step."""

    def __init__(self, policy: Policy, learner: KTOLearner, react: ReactFn, *, batch_size: int = 8) -> None:
        self.policy, self.learner, self.react = policy, learner, react
        self.batch_size = batch_size

    def round(self, next_prompts: Callable[[int], list[str]]) -> tuple[RoundLog, StepStats]:
        prompts = next_prompts(self.batch_size)
        responses = [s[0] for s in self.policy.sample(prompts, 1)]
        loved = self.react(prompts, responses)
        examples = [Reaction(x, y, love) for x, y, love in zip(prompts, responses, loved)]
        stats = self.learner.step(examples)
        return RoundLog(queries=len(prompts), labelled=len(examples), reactions=sum(loved)), stats
