"""CoRLL — coactive learning for LLMs (the coactive-learning paper, Algorithm 1).

    for t = 1..T:
        receive prompt x_t
        sample y¹..yᵏ ~ π_t(·|x_t);  y_t = argmax_i R_{π_t}(x_t, yⁱ)
        show y_t, observe the user's edit ȳ_t
        D ← D ∪ {(x_t, chosen=ȳ_t, rejected=y_t)}
        every N new preferences: one DPO step (Adam) on those N

The loop always exploits (it shows its best guess at the mode of π_t) and leaves
exploration to the user, whose edit says "this is better than what you wrote".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from corll.feedback import Edit, edit_costs
from corll.learners.dpo import DPOLearner, StepStats
from corll.learners.rounds import RoundLog, gather
from corll.policy import Policy
from corll.users import Editor


def argmax_draft(policy: Policy, prompts: Sequence[str], k: int, beta: float) -> list[str]:
    """y = argmax over k samples of the implicit reward β·(log π_t − log π_0)."""
    if k == 1:
        return [s[0] for s in policy.sample(prompts, 1)]
    return pick(*scored_candidates(policy, prompts, k, beta))


def scored_candidates(policy: Policy, prompts: Sequence[str], k: int,
                      beta: float) -> tuple[list[list[str]], torch.Tensor]:
    """k samples per prompt and their implicit rewards ([prompts, k])."""
    samples, logps = policy.sample_scored(prompts, k)  # log π_t comes with the samples
    return samples, implicit_rewards(policy, prompts, samples, beta, logps)


def implicit_argmax(policy: Policy, prompts: Sequence[str], samples: Sequence[Sequence[str]],
                    beta: float, logps: torch.Tensor | None = None) -> list[str]:
    """Per prompt, the sample with the highest implicit reward (for callers that reuse the samples);
    `logps` ([prompts, k]) are log π_t of the samples when the caller already has them."""
    if len(samples[0]) == 1:
        return [s[0] for s in samples]
    return pick(samples, implicit_rewards(policy, prompts, samples, beta, logps))


def implicit_rewards(policy: Policy, prompts: Sequence[str], samples: Sequence[Sequence[str]], beta: float,
                     logps: torch.Tensor | None = None) -> torch.Tensor:
    k = len(samples[0])
    flat_prompts = [x for x in prompts for _ in range(k)]
    flat = [y for s in samples for y in s]
    if logps is None:
        rewards = policy.implicit_reward(flat_prompts, flat, beta)
    else:
        rewards = beta * (logps.flatten() - policy.logprobs(flat_prompts, flat, reference=True))
    return rewards.view(len(prompts), k)


def pick(samples: Sequence[Sequence[str]], rewards: torch.Tensor) -> list[str]:
    return [s[i] for s, i in zip(samples, rewards.argmax(dim=1).tolist())]


class CoRLL:
    def __init__(self, policy: Policy, learner: DPOLearner, editor: Editor, *, k: int = 4,
                 batch_size: int = 8, rank_agreement: bool = False) -> None:
        self.policy, self.learner, self.editor = policy, learner, editor
        self.k, self.batch_size = k, batch_size
        self.rank_agreement = rank_agreement and k > 1  # keep the k samples' rewards for the round's log

    def draft(self, prompts: Sequence[str]) -> list[str]:
        """y_t = argmax over k samples of the implicit reward β·(log π_t − log π_0)."""
        return argmax_draft(self.policy, prompts, self.k, self.learner.config.beta)

    def ask(self, prompts: list[str]) -> RoundLog:
        candidates = []
        if self.rank_agreement:
            samples, rewards = scored_candidates(self.policy, prompts, self.k, self.learner.config.beta)
            drafts = pick(samples, rewards)
            candidates = list(zip(prompts, samples, rewards.tolist()))
        else:
            drafts = self.draft(prompts)
        edits = self.editor.edit(prompts, drafts)
        kept = [(x, e) for x, e in zip(prompts, edits) if e is not None]
        return RoundLog(pairs=[e.to_pair(x) for x, e in kept], edits=[e for _, e in kept],
                        costs=edit_costs(drafts, edits), queries=len(prompts), skipped=len(prompts) - len(kept),
                        shown=list(zip(prompts, drafts)), candidates=candidates)

    def round(self, next_prompts: Callable[[int], list[str]]) -> tuple[RoundLog, StepStats | None]:
        log = gather(next_prompts, self.batch_size, self.ask)
        return log, self.learner.step(log.pairs) if log.pairs else None

    def learn(self, prompts: Sequence[str], drafts: Sequence[str], edits: Sequence[Edit | None]) -> StepStats | None:
        """One DPO step on logged edits (the offline phase of the user-edits paper's protocol): ȳ ≻ y for each edit."""
        pairs = [e.to_pair(x) for x, e in zip(prompts, edits) if e is not None]
        return self.learner.step(pairs) if pairs else None
