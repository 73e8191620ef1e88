"""The dueling labeller of conventional online RLHF (the coactive-learning paper, §4.2).

Shown two responses y, y' to the same prompt, it prefers the one with the higher
true reward R*: noise-free feedback. A tie (equal rewards, e.g. identical texts)
carries no preference and is reported as such — never silently given to the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from corll.feedback import PreferencePair
from corll.tasks import Task


@dataclass(frozen=True)
class Duel:
    """The labeller's answer for one pair: a preference, or a tie (pair is None)."""

    pair: PreferencePair | None
    rewards: tuple[float, float]


@dataclass
class DuelingLabeller:
    task: Task

    def compare(self, prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> list[Duel]:
        rewards = self.task.reward(list(prompts) + list(prompts), list(first) + list(second))
        r1, r2 = rewards[: len(prompts)], rewards[len(prompts) :]
        duels = []
        for x, a, b, ra, rb in zip(prompts, first, second, r1, r2):
            if ra == rb or a == b:
                duels.append(Duel(None, (ra, rb)))
            else:
                chosen, rejected = (a, b) if ra > rb else (b, a)
                duels.append(Duel(PreferencePair(x, chosen, rejected), (ra, rb)))
        return duels
