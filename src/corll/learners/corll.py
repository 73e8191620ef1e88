"""CoRLL — coactive learning for LLMs (the coactive-learning paper, Algorithm 1).

    for t = 1..T:
        receive prompt x_t
        sample y¹..yᵏ ~ π_t(·|x_t);  y_t = argmax_i R_{π_t}(x_t, yⁱ)
        show y_t, observe the user's edit ȳ_t
        D ← D ∪ {(x_t, chosen=ȳ_t, rejected=y_t)}
        every N new preferences: one DPO step (Adam) on those N

The loop always exploits (it shows its best guess at the mode of π_t) and leaves
exploration to the user, whose edit says "this is better than what you wrote".
R_π(x, y) = β·(log π_t(y|x) − log π_0(y|x)) is DPO's implicit reward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from corll.feedback import Edit
from corll.learners.base import Defaults, NextPrompts
from corll.learners.dpo import DPOLearner, StepStats
from corll.learners.rounds import MAX_DRAWS, RoundLog
from corll.policy import Policy
from corll.users import Editor

# who wants to see each draft's k candidates and their implicit rewards: (prompt, samples, rewards)
CandidateObserver = Callable[[str, list[str], list[float]], None]


class CoRLL(Defaults):
    def __init__(self, policy: Policy, learner: DPOLearner, editor: Editor | None, *, k: int = 4,
                 batch_size: int = 8, observer: CandidateObserver | None = None) -> None:
        self.policy, self.learner, self.editor = policy, learner, editor
        self.k, self.batch_size, self.observer = k, batch_size, observer

    def round(self, next_prompts: NextPrompts) -> tuple[RoundLog, StepStats | None]:
        """Algorithm 1 up to one update: show drafts and take edits until N preferences, then one DPO step."""
        log = RoundLog()
        for _ in range(MAX_DRAWS):  # users who keep a draft as it is give no preference: ask again
            if len(log.pairs) >= self.batch_size:
                break
            prompts = next_prompts(self.batch_size - len(log.pairs))  # receive x_t
            drafts = self.act(prompts)  # y_t = argmax_i R_π(x_t, yⁱ)
            edits = self.editor.edit(prompts, drafts)  # show y_t, observe ȳ_t
            log.extend(RoundLog.edited(prompts, drafts, edits))  # D ← D ∪ {(x_t, ȳ_t ≻ y_t)}
        return log, self.update(log.pairs)

    def act(self, prompts: list[str]) -> list[str]:
        """y_t = argmax over k samples of the implicit reward."""
        if self.k == 1:
            return [s[0] for s in self.policy.sample(prompts, 1)]
        samples, rewards = scored_candidates(self.policy, prompts, self.k, self.learner.config.beta)
        if self.observer is not None:
            for x, ys, r in zip(prompts, samples, rewards.tolist()):
                self.observer(x, ys, r)
        return pick(samples, rewards)

    def learn(self, prompts: Sequence[str], drafts: Sequence[str], edits: Sequence[Edit | None]) -> StepStats | None:
        """One DPO step on logged edits (the offline phase of the user-edits paper's protocol): ȳ ≻ y for each edit."""
        return self.update([e.to_pair(x) for x, e in zip(prompts, edits) if e is not None])

    def update(self, pairs) -> StepStats | None:
        return self.learner.step(pairs) if pairs else None


class RankAgreement(CoRLL):
    """CoRLL whose round logs also carry each draft's k candidates and their implicit rewards, so the
    simulation can measure how the implicit-reward ranking agrees with R* (instrumentation only)."""

    def __init__(self, *args, **kwargs) -> None:
        self.seen: list[tuple[str, list[str], list[float]]] = []
        super().__init__(*args, observer=lambda *c: self.seen.append(c), **kwargs)

    def round(self, next_prompts: NextPrompts) -> tuple[RoundLog, StepStats | None]:
        self.seen = []
        log, stats = super().round(next_prompts)
        log.candidates = self.seen
        return log, stats


def scored_candidates(policy: Policy, prompts: Sequence[str], k: int,
                      beta: float) -> tuple[list[list[str]], torch.Tensor]:
    """k samples per prompt and their implicit rewards ([prompts, k]); log π_t comes with the samples."""
    samples, logps = policy.sample_scored(prompts, k)
    return samples, implicit_rewards(policy, prompts, samples, beta, logps)


def implicit_rewards(policy: Policy, prompts: Sequence[str], samples: Sequence[Sequence[str]], beta: float,
                     logps: torch.Tensor | None = None) -> torch.Tensor:
    """β·(log π_t − log π_0) of each sample ([prompts, k]); `logps` are log π_t when the caller has them."""
    k = len(samples[0])
    flat_prompts = [x for x in prompts for _ in range(k)]
    flat = [y for s in samples for y in s]
    if logps is None:
        rewards = policy.implicit_reward(flat_prompts, flat, beta)
    else:
        rewards = beta * (logps.flatten() - policy.logprobs(flat_prompts, flat, reference=True))
    return rewards.view(len(prompts), k)


def pick(samples: Sequence[Sequence[str]], rewards: torch.Tensor) -> list[str]:
    """Per prompt, the sample with the highest reward."""
    return [s[i] for s, i in zip(samples, rewards.argmax(dim=1).tolist())]
