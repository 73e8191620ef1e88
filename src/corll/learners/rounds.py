"""What one learning round produced, and the loop that gathers N preferences for it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from corll.feedback import Edit, PreferencePair

# How many times a round may go back for more prompts when users drop rounds or tie.
MAX_DRAWS = 8


@dataclass
class RoundLog:
    """The preferences a round used, the edits behind them, and the queries that gave no preference
    (noise-free drops or dueling ties)."""

    pairs: list[PreferencePair] = field(default_factory=list)
    edits: list[Edit] = field(default_factory=list)
    queries: int = 0
    skipped: int = 0
    costs: list[int] = field(default_factory=list)  # edit cost (words) of every shown response, 0 if kept
    labelled: int = 0  # unpaired labelled examples (reaction learners: every shown response)
    reactions: int = 0  # loves among them
    shown: list[tuple[str, str]] = field(default_factory=list)  # (prompt, response) the users were shown
    shown_rewards: list[float] | None = None  # their R*, where the feedback already computed it (dueling's labeller)
    # CoRLL with rank_agreement: (prompt, its k samples, their implicit rewards) behind each argmax
    candidates: list[tuple[str, list[str], list[float]]] = field(default_factory=list)

    @property
    def feedback(self) -> int:
        """Units of feedback this round used: preference pairs, or labelled reactions."""
        return len(self.pairs) + self.labelled


Ask = Callable[[list[str]], RoundLog]


def gather(next_prompts: Callable[[int], list[str]], n: int, ask: Ask) -> RoundLog:
    """Ask users about fresh prompts until n preferences are in (or MAX_DRAWS batches were asked)."""
    log, parts = RoundLog(), []
    for _ in range(MAX_DRAWS):
        missing = n - len(log.pairs)
        if missing <= 0:
            break
        part = ask(next_prompts(missing))
        parts.append(part)
        log.pairs += part.pairs
        log.edits += part.edits
        log.queries += part.queries
        log.skipped += part.skipped
        log.costs += part.costs
        log.shown += part.shown
        log.candidates += part.candidates
    if parts and all(part.shown_rewards is not None for part in parts):
        log.shown_rewards = [r for part in parts for r in part.shown_rewards]
    return log
