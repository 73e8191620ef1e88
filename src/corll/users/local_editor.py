"""The local editor: a user who revises the draft itself rather than rewriting it (SPEC §1).

Real users fix a few words and move on, so ȳ is a small, genuine improvement of y
with a small edit distance. The task says how its users revise (`Task.local_edit`);
this class turns those revisions into `Edit`s, with the true rewards recorded so
wrong-way edits (R*(ȳ) ≤ R*(y)) are counted as mislabels. A draft the user leaves
unchanged carries no preference and is skipped (`None`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from corll.feedback import Edit
from corll.tasks import Task


@dataclass
class LocalEditor:
    task: Task

    def __post_init__(self) -> None:
        if self.task.local_edit is None:
            raise ValueError(f"task {self.task.name!r} defines no local edit; use the expert editor")

    def edit(self, prompts: Sequence[str], drafts: Sequence[str]) -> list[Edit | None]:
        revised = [self.task.local_edit(x, y) for x, y in zip(prompts, drafts)]
        changed = [i for i, (y, r) in enumerate(zip(drafts, revised)) if r.strip() and r != y]
        rewards = self.task.reward([prompts[i] for i in changed] * 2,
                                   [drafts[i] for i in changed] + [revised[i] for i in changed])
        edits: list[Edit | None] = [None] * len(drafts)
        for j, i in enumerate(changed):
            edits[i] = Edit(draft=drafts[i], text=revised[i], draft_reward=rewards[j],
                            edit_reward=rewards[len(changed) + j], cost=self.task.edit_cost(drafts[i], revised[i]))
        return edits
