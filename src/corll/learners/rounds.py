"""What one learning round produced, and the loop that gathers N preferences for it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from corll.feedback import Edit, PreferencePair, edit_costs

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

    @classmethod
    def edited(cls, prompts: list[str], drafts: list[str], edits: list[Edit | None],
               pairs: list[PreferencePair] | None = None) -> RoundLog:
        """Drafts shown and their users' edits (None: kept as drafted). The pairs default to ȳ ≻ y, and
        then an unedited draft is a skipped query; learners that bring their own pairs (SFT, cost, the
        ensembles) learn from every draft and skip none."""
        kept = [(x, e) for x, e in zip(prompts, edits) if e is not None]
        return cls(pairs=[e.to_pair(x) for x, e in kept] if pairs is None else list(pairs),
                   edits=[e for _, e in kept], queries=len(prompts),
                   skipped=len(prompts) - len(kept) if pairs is None else 0,
                   costs=edit_costs(drafts, edits), shown=list(zip(prompts, drafts)))

    def extend(self, part: RoundLog) -> None:
        """Add a later batch of the same round."""
        self.pairs += part.pairs
        self.edits += part.edits
        self.queries += part.queries
        self.skipped += part.skipped
        self.costs += part.costs
        self.shown += part.shown
        self.candidates += part.candidates

    @property
    def feedback(self) -> int:
        """Units of feedback this round used: preference pairs, or labelled reactions."""
        return len(self.pairs) + self.labelled


Ask = Callable[[list[str]], RoundLog]


def ask_until(next_prompts: Callable[[int], list[str]], n: int, ask: Ask) -> RoundLog:
    """Ask users about fresh prompts until n preferences are in (or MAX_DRAWS batches were asked)."""
    log, parts = RoundLog(), []
    for _ in range(MAX_DRAWS):
        missing = n - len(log.pairs)
        if missing <= 0:
            break
        part = ask(next_prompts(missing))
        parts.append(part)
        log.extend(part)
    if parts and all(part.shown_rewards is not None for part in parts):
        log.shown_rewards = [r for part in parts for r in part.shown_rewards]
    return log
