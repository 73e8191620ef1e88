"""RLUF — reinforcement learning from user feedback (the reactions paper), as online DPO on a weighted reward.

    for t = 1..T:
        sample y¹..yⁿ ~ π_t(·|x) for each prompt x
        score R(x, y) = Σ_i w_i · objective_i(x, y)      (P[Love], helpfulness, safety)
        D ← D ∪ {(x, chosen = argmax_j R, rejected = argmin_j R)}   when they differ
        every N pairs: one DPO step; β and the frozen π_0 keep π_t close (KL control)

`RLOO` is the alternative update over the same n samples: REINFORCE with each sample's
reward minus the mean of the other n − 1 (the leave-one-out baseline), and the KL to π_0
charged inside the reward. docs/pilots/reactions-pilot.md compares the two at the same samples and
reward; DPO stays the default (why: see there).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from corll.feedback import PreferencePair
from corll.learners.base import Defaults
from corll.learners.dpo import DPOLearner, PolicyOptimizer, StepStats
from corll.learners.rounds import RoundLog, ask_until
from corll.policy import Policy
from corll.batches import sequence_logprobs
from corll.tasks import RewardFn


def weighted_reward(objectives: dict[str, RewardFn], weights: dict[str, float]) -> RewardFn:
    unknown = set(weights) - set(objectives)
    if unknown:
        raise ValueError(f"unknown objective(s) {', '.join(sorted(unknown))}: this task has {', '.join(objectives)}")

    def reward(xs: Sequence[str], ys: Sequence[str]) -> list[float]:
        total = [0.0] * len(ys)
        for name, w in weights.items():
            if w:
                total = [t + w * v for t, v in zip(total, objectives[name](xs, ys))]
        return total

    return reward


class RLUF(Defaults):
    def __init__(self, policy: Policy, learner: DPOLearner, reward: RewardFn, *, n: int = 4,
                 batch_size: int = 8) -> None:
        self.policy, self.learner, self.reward = policy, learner, reward
        self.n, self.batch_size = n, batch_size

    def ask(self, prompts: list[str]) -> RoundLog:
        samples = self.policy.sample(prompts, self.n)
        scores = self.reward([x for x in prompts for _ in range(self.n)], [y for s in samples for y in s])
        pairs = []
        for i, (x, ys) in enumerate(zip(prompts, samples)):
            r = scores[i * self.n : (i + 1) * self.n]
            best, worst = max(range(self.n), key=r.__getitem__), min(range(self.n), key=r.__getitem__)
            if r[best] > r[worst]:
                pairs.append(PreferencePair(x, ys[best], ys[worst]))
        return RoundLog(pairs=pairs, queries=len(prompts), skipped=len(prompts) - len(pairs))

    def round(self, next_prompts: Callable[[int], list[str]]) -> tuple[RoundLog, StepStats | None]:
        log = ask_until(next_prompts, self.batch_size, self.ask)
        return log, self.learner.step(log.pairs) if log.pairs else None


def leave_one_out(rewards: torch.Tensor) -> torch.Tensor:
    """Each sample's reward minus the mean reward of the other samples of its prompt (rows = prompts)."""
    n = rewards.shape[1]
    return rewards - (rewards.sum(1, keepdim=True) - rewards) / (n - 1)


class RLOO(Defaults):
    """REINFORCE leave-one-out on Σ w·objective − β·KL: one step per round of N prompts × n samples."""

    def __init__(self, policy: Policy, reward: RewardFn, *, n: int = 4, batch_size: int = 8, lr: float = 2e-4,
                 beta: float = 0.1, micro_batch: int = 8) -> None:
        if n < 2:
            raise ValueError("RLOO needs n >= 2 samples per prompt for its leave-one-out baseline")
        self.policy, self.reward, self.n, self.batch_size = policy, reward, n, batch_size
        self.beta, self.micro_batch = beta, micro_batch
        self.optim = PolicyOptimizer(policy, lr)

    def round(self, next_prompts: Callable[[int], list[str]]) -> tuple[RoundLog, StepStats]:
        prompts = next_prompts(self.batch_size)
        samples = self.policy.sample(prompts, self.n)
        xs, ys = [x for x in prompts for _ in range(self.n)], [y for s in samples for y in s]
        scores = torch.tensor(self.reward(xs, ys), dtype=torch.float32, device=self.policy.device)
        scores = scores.view(len(prompts), self.n)
        with torch.no_grad():
            kl = (self.policy.logprobs(xs, ys) - self.policy.logprobs(xs, ys, reference=True)).view_as(scores)
        shaped = scores - self.beta * kl
        advantage = leave_one_out(shaped).flatten()
        self.optim.model.train()
        total = 0.0
        for start in range(0, len(ys), self.micro_batch):
            part = slice(start, start + self.micro_batch)
            with self.policy.training_attention(), self.policy.autocast():
                logps = sequence_logprobs(self.optim.model, self.policy.encode(xs[part], ys[part]))
            loss = -(advantage[part] * logps.float()).sum() / len(ys)
            self.optim.backward(loss, "RLOO loss")
            total += loss.item()
        stats = StepStats(loss=total, margin=float(scores.mean()), accuracy=float((advantage > 0).float().mean()),
                          grad_norm=self.optim.apply("RLOO"))
        return RoundLog(queries=len(prompts), labelled=len(ys)), stats

    def state_dict(self) -> dict:
        return self.optim.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optim.load_state_dict(state)
