"""RLUF — reinforcement learning from user feedback (seed 004), as online DPO on a weighted reward.

    for t = 1..T:
        sample y¹..yⁿ ~ π_t(·|x) for each prompt x
        score R(x, y) = Σ_i w_i · objective_i(x, y)      (P[Love], helpfulness, safety)
        D ← D ∪ {(x, chosen = argmax_j R, rejected = argmin_j R)}   when they differ
        every N pairs: one DPO step; β and the frozen π_0 keep π_t close (KL control)

Why best-vs-worst DPO rather than RLOO: it reuses the CoRLL learner, its reference
cache and its KL control unchanged, and needs no value baseline; with n = 4 samples
the pair spans most of the reward range the policy can currently reach.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from corll.feedback import PreferencePair
from corll.learners.dpo import DPOLearner, StepStats
from corll.learners.rounds import RoundLog, gather
from corll.policy import Policy
from corll.tasks import RewardFn


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


class RLUF:
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
        log = gather(next_prompts, self.batch_size, self.ask)
        return log, self.learner.step(log.pairs) if log.pairs else None
