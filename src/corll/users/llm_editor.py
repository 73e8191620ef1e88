"""A prompted language model as the editing user (the user-edits paper's LLM user, at our scale).

The rule editors are exact and cheap; real users are neither. This editor keeps the
task's judgement of whether a draft already fits the user (the rule: no edit when it
does) and lets a model write the revision, told the user's preference in words — the
way the user-edits paper prompts GPT-4 with the latent preference. Its edits are noisier and may
even be worse than the draft; the learners must cope, as with real users.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from corll.feedback import Edit
from corll.policy import Policy
from corll.tasks import Task

INSTRUCTION = ("You edit drafts for a user. Their preference: {preference} Rewrite the draft so that it "
               "follows this preference, changing as little as needed. Reply with the rewritten text only.")


@dataclass
class LLMEditor:
    task: Task
    model: Policy  # its reference weights (π_0) write the revisions

    def __post_init__(self) -> None:
        if self.task.local_edit is None or self.task.describe_user is None:
            raise ValueError(f"the LLM editor needs a task that judges drafts and describes its users "
                             f"(prelude-summarize, prelude-email, …), not {self.task.name!r}")

    def edit(self, prompts: Sequence[str], drafts: Sequence[str]) -> list[Edit | None]:
        needed = [i for i, (x, y) in enumerate(zip(prompts, drafts)) if self.task.local_edit(x, y) != y]
        chats = [[{"role": "system", "content": INSTRUCTION.format(preference=self.task.describe_user(prompts[i]))},
                  {"role": "user", "content": f"Request: {prompts[i]}\n\nDraft:\n{drafts[i]}"}] for i in needed]
        revised = [s[0] for s in self.model.sample(chats, 1, use_reference=True)] if chats else []
        edits: list[Edit | None] = [None] * len(drafts)
        rewards = self.task.reward([prompts[i] for i in needed] * 2, [drafts[i] for i in needed] + revised)
        for j, (i, text) in enumerate(zip(needed, revised)):
            if text.strip() and text != drafts[i]:
                edits[i] = Edit(draft=drafts[i], text=text, draft_reward=rewards[j],
                                edit_reward=rewards[len(needed) + j])
        return edits
