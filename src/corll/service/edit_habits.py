"""What a user changes every time: the recurring parts of their edits, learned from their log, used to
predict how much they would edit a draft they have not seen.

An edit mixes the particular (this draft's wrong detail) with habits (the greeting the user always
adds, the sign-off they always delete). Habits are what a version can learn from a handful of edits,
and they decide whether its drafts cost the user less; a draft's distance to the edit the user wrote
for *another* draft of the same prompt does not (two drafts share little text), which is why the
learner's gate predicts the cost with habits instead.

From each logged draft y and edit ȳ, a diff over word-and-punctuation tokens (the units the edit cost
counts) gives the spans the user deleted and the spans they inserted. A span is a habit when it recurs
in at least `share` of the user's edits. The predicted cost of a fresh draft is the tokens of every
inserted habit it lacks plus those of every deleted habit it still contains: the edits the user would
make again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from difflib import SequenceMatcher

from corll.feedback import edit_tokens

Span = tuple[str, ...]


def changed_spans(draft: str, edit: str) -> tuple[set[Span], set[Span]]:
    """The token spans the user deleted from the draft and those they inserted into it."""
    a, b = edit_tokens(draft), edit_tokens(edit)
    deleted, inserted = set(), set()
    for tag, i1, i2, j1, j2 in SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag in ("replace", "delete"):
            deleted.add(tuple(a[i1:i2]))
        if tag in ("replace", "insert"):
            inserted.add(tuple(b[j1:j2]))
    return deleted, inserted


def contains(tokens: list[str], span: Span) -> bool:
    n = len(span)
    return any(tuple(tokens[i:i + n]) == span for i in range(len(tokens) - n + 1))


@dataclass(frozen=True)
class EditHabits:
    deleted: tuple[Span, ...]
    inserted: tuple[Span, ...]

    @classmethod
    def learn(cls, pairs: Iterable[tuple[str, str]], share: float = 0.5) -> EditHabits:
        """The spans deleted, and those inserted, in at least `share` of the (draft, edit) pairs that changed."""
        deleted, inserted, edits = Counter(), Counter(), 0
        for draft, edit in pairs:
            if draft == edit:
                continue
            gone, added = changed_spans(draft, edit)
            deleted.update(gone)
            inserted.update(added)
            edits += 1
        need = share * edits
        return cls(tuple(sorted(s for s, n in deleted.items() if n >= need)),
                   tuple(sorted(s for s, n in inserted.items() if n >= need)))

    def cost(self, draft: str) -> int:
        """Tokens the user would change in this draft by habit: missing insertions, surviving deletions."""
        tokens = edit_tokens(draft)
        return (sum(len(s) for s in self.inserted if not contains(tokens, s))
                + sum(len(s) for s in self.deleted if contains(tokens, s)))
