"""The paper's expert-based editor (the coactive-learning paper, §4.1 and §4.4).

For a draft y the user samples l candidates from the expert π*, sorts them by the
true reward R*, and returns as the edit ȳ:
- minimal improvement: the lowest candidate whose R* exceeds R*(y);
- with strength α: the lowest candidate that is α-informative,
  R*(ȳ) − R*(y) ≥ α·(R*(y*) − R*(y)), with R*(y*) estimated by the best candidate;
- when no candidate beats y: the best candidate anyway (noisy, a mislabeled pair)
  or nothing (noise-free, the round is dropped);
- with probability ε, on purpose, that answer's preference flipped (the draft
  preferred to the chosen candidate): injected mislabels. Picking a worse candidate
  instead would inject nothing where every expert candidate beats the draft, as
  they nearly always do under a DPO-trained expert.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from corll.feedback import Edit
from corll.tasks import Task


@dataclass(frozen=True)
class EditChoice:
    """Which candidate the user returns (None: no edit, the round is dropped)."""

    index: int | None


def choose_edit(draft_reward: float, candidate_rewards: Sequence[float], *, alpha: float | None = None,
                noise_free: bool = False) -> EditChoice:
    """The selection rule above (before any injected flip), as a pure function of the rewards."""
    order = sorted(range(len(candidate_rewards)), key=lambda i: candidate_rewards[i])
    best = order[-1]
    gap = candidate_rewards[best] - draft_reward
    for i in order:
        gain = candidate_rewards[i] - draft_reward
        if gain > 0 and (alpha is None or gain >= alpha * gap - 1e-12):
            return EditChoice(i)
    return EditChoice(None if noise_free else best)


@dataclass
class ExpertEditor:
    """Edits drafts by choosing among l expert candidates. Paper IMDB defaults: l=25, α=0.6, noisy."""

    task: Task
    l: int = 25
    alpha: float | None = None
    noise_free: bool = False
    epsilon: float = 0.0

    def edit(self, prompts: Sequence[str], drafts: Sequence[str]) -> list[Edit | None]:
        """One edit per draft, or None where the noise-free user drops the round."""
        candidates = self.task.expert(prompts, self.l)
        flat_prompts = [x for x, cands in zip(prompts, candidates) for _ in cands]
        flat_rewards = self.task.reward(flat_prompts, [c for cands in candidates for c in cands])
        draft_rewards = self.task.reward(prompts, drafts)
        edits: list[Edit | None] = []
        for i, (draft, cands) in enumerate(zip(drafts, candidates)):
            rewards = flat_rewards[i * self.l : (i + 1) * self.l]
            choice = choose_edit(draft_rewards[i], rewards, alpha=self.alpha, noise_free=self.noise_free)
            if choice.index is None:
                edits.append(None)
                continue
            gap = max(rewards) - draft_rewards[i]
            gain = rewards[choice.index] - draft_rewards[i]
            edit = Edit(draft=draft, text=cands[choice.index], draft_reward=draft_rewards[i],
                        edit_reward=rewards[choice.index], alpha_hat=gain / gap if gap > 0 else math.nan)
            if self.epsilon > 0 and torch.rand(()).item() < self.epsilon:  # flipped on purpose: ȳ ≺ y
                edit = Edit(draft=edit.text, text=edit.draft, draft_reward=edit.edit_reward,
                            edit_reward=edit.draft_reward, alpha_hat=math.nan)
            edits.append(edit)
        return edits
