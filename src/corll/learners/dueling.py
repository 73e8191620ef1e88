"""Dueling RLHF, the conventional online baseline (the coactive-learning paper, §4.2).

Two samples y, y' from the current policy, labelled by the true reward, and the
same DPO learner and batch size as CoRLL. Ties give no preference and are counted.
"""

from __future__ import annotations

from collections.abc import Callable

from corll.learners.base import Defaults
from corll.learners.dpo import DPOLearner, StepStats
from corll.learners.rounds import RoundLog, ask_until
from corll.policy import Policy
from corll.users.dueling import DuelingLabeller


class Dueling(Defaults):
    def __init__(self, policy: Policy, learner: DPOLearner, labeller: DuelingLabeller, *,
                 batch_size: int = 8) -> None:
        self.policy, self.learner, self.labeller = policy, learner, labeller
        self.batch_size = batch_size

    def ask(self, prompts: list[str]) -> RoundLog:
        samples = self.policy.sample(prompts, 2)
        duels = self.labeller.compare(prompts, [s[0] for s in samples], [s[1] for s in samples])
        pairs = [d.pair for d in duels if d.pair is not None]
        shown = [(x, y) for x, s in zip(prompts, samples) for y in s]
        return RoundLog(pairs=pairs, queries=len(prompts), skipped=len(prompts) - len(pairs), shown=shown,
                        shown_rewards=[r for d in duels for r in d.rewards])

    def round(self, next_prompts: Callable[[int], list[str]]) -> tuple[RoundLog, StepStats | None]:
        log = ask_until(next_prompts, self.batch_size, self.ask)
        return log, self.learner.step(log.pairs) if log.pairs else None
