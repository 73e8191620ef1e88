"""The online canary: a candidate that passed the offline gate serves a share of its lineage's drafts, and
is promoted only when its users' edits say it costs them less than the version it would replace.

The offline gate judges a candidate on a few held-out edits; the canary judges it on what matters, live.
While it is open, each request of the lineage's users is drafted by the candidate with probability
`share` (by the version serving them otherwise, the control, the rest of the time), and the interaction
logs which version drafted it. A draft's cost is the number of words its user's edit changed
(`feedback.word_edit_distance`). At each look (at the start of each learner pass and after each candidate
it trains, if edits came in), the k-th edited candidate draft is paired with the k-th edited control
draft, in the order they were edited: when the two
versions are equally good, each pair is a fair coin between "the candidate's draft cost fewer words" (a
win) and "more" (a loss); ties say nothing and are dropped. Two mixture sequential probability ratio tests
(`stats.sign_evidence`) watch the signs, one for "better" and one for "worse":

  - promoted when the evidence for "better" reaches 1/α: the chance of ever promoting a candidate that is
    not better, at any number of looks, is at most α (Ville's inequality);
  - rejected when the evidence for "worse" reaches 1/α, or when `budget` edited candidate drafts have
    come in without a verdict (not shown better: the safe default is the version users have now).

Signs rather than the words themselves: the words saved are heavy-tailed (one long rewrite outweighs
twenty small fixes) and a t-test's error rate holds at one planned look, not at every poll. The cost is
power: with α = 0.05 a candidate that wins three pairs in four needs about 25 pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

from corll.feedback import word_edit_distance
from corll.stats import sign_evidence
from corll.store import Store
from corll.store.schema import Canary, CanaryLook, Decision


@dataclass(frozen=True)
class CanarySettings:
    share: float = 0.0  # of the lineage's drafts written by the candidate; 0: the offline gate promotes alone
    alpha: float = 0.05  # the chance of promoting a candidate that is not better, however often one looks
    budget: int = 40  # edited candidate drafts before an undecided canary is rejected

    def __post_init__(self) -> None:
        if not 0 <= self.share < 1:
            raise ValueError(f"the canary share is a fraction of drafts in [0, 1), not {self.share}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"the canary's alpha is a probability in (0, 1), not {self.alpha}")
        if self.budget < 1:
            raise ValueError(f"the canary's budget is at least one draft, not {self.budget}")

    @property
    def on(self) -> bool:
        return self.share > 0


@dataclass(frozen=True)
class Verdict:
    look: CanaryLook
    decision: str | None  # promoted | rejected | None: keep serving it
    reason: str


def judge(candidate: list[float], control: list[float], alpha: float, budget: int) -> Verdict:
    """The canary's look at the edit costs of the candidate's and the control's drafts, in edit order."""
    pairs = list(zip(candidate, control))
    wins = sum(a < b for a, b in pairs)
    losses = sum(a > b for a, b in pairs)
    look = CanaryLook(candidate=len(candidate), control=len(control), wins=wins, losses=losses,
                      ties=len(pairs) - wins - losses, better=sign_evidence(wins, losses),
                      worse=sign_evidence(losses, wins))
    tally = (f"its drafts cost fewer edited words in {wins} and more in {losses} of {len(pairs)} pairs with the "
             f"control's")
    if look.better >= 1 / alpha:
        return Verdict(look, "promoted", f"canary: {tally} (evidence {look.better:.1f} ≥ {1 / alpha:g})")
    if look.worse >= 1 / alpha:
        return Verdict(look, "rejected", f"canary: {tally}, worse (evidence {look.worse:.1f} ≥ {1 / alpha:g})")
    if len(candidate) >= budget:
        return Verdict(look, "rejected", f"canary: not shown better within its budget of {budget} drafts; {tally}")
    return Verdict(look, None, f"canary: {tally}; evidence {look.better:.2f} for better, {look.worse:.2f} "
                               f"for worse, {len(candidate)} of {budget} drafts")


def watch(store: Store, canary: Canary) -> Decision | None:
    """Look at an open canary if edits came in since its last look: the look is stored, and a verdict
    closes the canary (promoting its candidate or not) in the same transaction. Returns the decision that
    closed it, if this look did."""
    version = store.version(canary.version_id)
    if version.retired_at is not None or version.active:  # a forget retired it, or an admin activated it
        empty = judge([], [], canary.alpha, canary.budget).look
        if version.active:
            return store.close_canary(canary.id, empty, "promoted", "canary: activated by hand before a verdict")
        return store.close_canary(canary.id, empty, "rejected",
                                  "canary: its version was retired (trained on a forgotten user's feedback)")
    candidate, control = ([word_edit_distance(draft, edit) for draft, edit in arm]
                          for arm in store.canary_edits(canary.id))
    last = canary.looks[-1] if canary.looks else None
    if ((last.candidate, last.control) if last else (0, 0)) == (len(candidate), len(control)):
        return None  # nothing edited since the last look (or at all)
    verdict = judge(candidate, control, canary.alpha, canary.budget)
    if verdict.decision is None:
        store.add_look(canary.id, verdict.look)
        return None
    return store.close_canary(canary.id, verdict.look, verdict.decision, verdict.reason)
