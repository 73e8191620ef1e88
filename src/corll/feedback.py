"""What users give back, and what a learner takes from it.

An `Edit` is the user's revision ȳ of a draft y; it yields a `PreferencePair`
(x, chosen=ȳ, rejected=y) in the TRL `prompt/chosen/rejected` format, and an
edit cost: the Levenshtein distance over word and punctuation tokens (PRELUDE's measure).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from rapidfuzz.distance import Levenshtein

# A user message, or a whole chat as a list of {role, content} messages (what the server logs).
Prompt = str | Sequence[dict]


@dataclass(frozen=True)
class PreferencePair:
    """x, with `chosen` preferred to `rejected`; `mislabeled` is known only in simulation."""

    prompt: Prompt
    chosen: str
    rejected: str
    mislabeled: bool = False
    # The chosen text is whole — the text a user kept — so it is learned with its end-of-text token:
    # the policy learns where the user's text stops, not only how it begins (a draft may be cut short).
    chosen_ends: bool = False

    def to_trl(self) -> dict:
        """The plain dict that TRL's DPOTrainer and `datasets` read (conversational when x is a chat)."""
        if isinstance(self.prompt, str):
            return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}
        return {"prompt": list(self.prompt), "chosen": [{"role": "assistant", "content": self.chosen}],
                "rejected": [{"role": "assistant", "content": self.rejected}]}


@dataclass(frozen=True)
class Edit:
    """A user's revision of a draft. Simulated users also report what they know about it:
    the true rewards of both texts and the realised feedback strength α̂."""

    draft: str
    text: str
    draft_reward: float | None = None
    edit_reward: float | None = None
    alpha_hat: float | None = None
    cost: int | None = None  # what the user changed, in their task's measure (None: corll's token measure)

    def changed(self) -> int:
        """The edit cost: the task's own measure where the editor recorded it, else Levenshtein over tokens."""
        return self.cost if self.cost is not None else word_edit_distance(self.draft, self.text)

    @property
    def mislabeled(self) -> bool:
        """True when the edit is not better than the draft under the true reward (a wrong-way pair)."""
        if self.draft_reward is None or self.edit_reward is None:
            return False
        return self.edit_reward <= self.draft_reward

    def to_pair(self, prompt: str) -> PreferencePair:
        return PreferencePair(prompt, chosen=self.text, rejected=self.draft, mislabeled=self.mislabeled)


# A word (letters, digits, underscores; inner apostrophes and hyphens kept, as in "don't" and "well-known") or
# one punctuation mark or symbol. Punctuation counts as in PRELUDE (NLTK's word tokens): a user who only
# fixes commas did edit, and a split on whitespace would charge "great." → "great!" as a whole new word.
TOKEN = re.compile(r"\w+(?:['’-]\w+)*|[^\w\s]")


def edit_tokens(text: str) -> list[str]:
    """The units an edit cost counts: words and punctuation marks."""
    return TOKEN.findall(text)


def word_edit_distance(a: str, b: str) -> int:
    """Levenshtein distance over word and punctuation tokens: how many of them the user had to change."""
    return Levenshtein.distance(edit_tokens(a), edit_tokens(b))


def edit_costs(drafts: Sequence[str], edits: Sequence[Edit | None]) -> list[int]:
    """The cost of each shown draft: the tokens its user changed, 0 when it was kept as it was."""
    return [0 if e is None else e.changed() for e in edits]


def relative_cost(draft: str, cost: int) -> float:
    """The normalised edit cost: what the user changed per whitespace word of the draft, so that short and
    long responses compare (it exceeds 1 when the user writes more than was there). Per word rather than per
    token: a draft's word count does not depend on its punctuation, whatever measure the task's cost uses."""
    return cost / max(1, len(draft.split()))
