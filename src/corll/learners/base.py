"""The one interface every learner offers the simulation loop, which never asks which learner it has.

A learner runs `round(next_prompts)`: it draws prompts, shows responses to its feedback source (a
user who edits, a labeller, reactions), and takes at most one update; it reports what happened in a
`RoundLog`. Its training state beyond the policy's weights goes through `state_dict` (checkpoints),
`shown()` is the policy users meet (evaluated and saved), `summary()` adds what is its own to the
run's summary. Learners from edits also `act` and `learn`, so logged edits can train them offline
and an ensemble can hold them as members.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from corll.feedback import Edit
    from corll.learners.dpo import StepStats
    from corll.learners.rounds import RoundLog
    from corll.policy import Policy

NextPrompts = Callable[[int], list[str]]


@dataclass(frozen=True)
class Shown:
    """The policy users meet, and the system message each prompt gets (the oracle is told its user)."""

    policy: Policy
    system_for: Callable[[str], str] | None = None


class Learner(Protocol):
    def round(self, next_prompts: NextPrompts) -> tuple[RoundLog, StepStats | None]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def shown(self) -> Shown: ...

    def summary(self) -> dict: ...


class EditLearner(Learner, Protocol):
    def act(self, prompts: list[str]) -> list[str]: ...

    def learn(self, prompts: Sequence[str], drafts: Sequence[str],
              edits: Sequence[Edit | None]) -> StepStats | None: ...


class Defaults:
    """What most learners share: one inner learner holds the optimizer state, users meet the policy
    trained, and nothing of their own goes into the summary."""

    policy: Policy

    def state_dict(self) -> dict:
        return self.learner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.learner.load_state_dict(state)

    def shown(self) -> Shown:
        return Shown(self.policy)

    def summary(self) -> dict:
        return {}
