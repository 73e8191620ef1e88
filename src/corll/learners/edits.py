"""One edit, three signals (the user-edits paper): learners for the preference, the supervision and the cost an
edit carries, and their early and late ensembles. All share the policy layer and the round records.

A logged edit (x, y, ȳ) gives: the pair ȳ ≻ y (DPO, as CoRLL), the target ȳ (SFT), and the cost
c = Δ_words(y, ȳ) (0 when the user kept y). Every agent here answers `round(next_prompts)` like
CoRLL, so `corll simulate --algorithm sft|cost|ensemble-early|ensemble-late` records the same metrics.

- sft: show one sample; SFT on what the user kept (ȳ, or y itself when unedited); AdamW weight
  decay on the adapter keeps π near π_ref.
- cost: learns from c alone. A ridge-regression cost model on MiniLM embeddings of (x, y) is fitted
  on every observed (x, y, c); the agent shows the lowest-predicted-cost of k samples, and trains on
  the pair (lowest ≻ highest predicted cost) — preferences ordered by predicted cost, since only the
  shown sample's cost is observed.
- ensemble-early: one model, one step on w_pref·DPO(ȳ ≻ y) + w_sft·SFT(ȳ) + w_cost·DPO(lowest ≻ highest
  predicted cost among its k samples); it shows the implicit-reward argmax of the same samples, as CoRLL.
- headroom (a bound, not a learner): the least-edited of k π_0 samples under the true editor.
- ensemble-late: the three learners on separate adapters; for each episode an EXP3 bandit over their
  observed cost picks who answers, and every learner learns from all the resulting edits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from corll.feedback import Edit, PreferencePair, edit_costs, relative_cost
from corll.learners.base import Defaults, NextPrompts, Shown
from corll.learners.corll import implicit_rewards, pick
from corll.learners.dpo import DPOLearner, PolicyOptimizer, StepStats
from corll.losses import sft_nll
from corll.learners.rounds import RoundLog
from corll.policy import Policy
from corll.batches import sequence_logprobs
from corll.users import Editor


def kept_text(draft: str, edit: Edit | None) -> str:
    """What the user kept: the edit, or the draft itself when it needed none."""
    return draft if edit is None else edit.text


def sft_loss(policy: Policy, model: torch.nn.Module, prompts: Sequence[str], targets: Sequence[str],
             n: int) -> torch.Tensor:
    """Σ token-mean NLL of the targets, divided by the whole batch size n (for micro-batching)."""
    batch = policy.encode(prompts, targets)
    with policy.training_attention(), policy.autocast():
        logps = sequence_logprobs(model, batch)
    return sft_nll(logps, batch.response_mask.sum(-1)).sum() / n


def accumulate_sft(policy: Policy, optim: PolicyOptimizer, prompts: Sequence[str], targets: Sequence[str],
                   micro_batch: int = 4, weight: float = 1.0) -> float:
    """Backpropagate weight × the batch-mean NLL of the targets in micro-batches; returns that loss."""
    n, total = len(prompts), 0.0
    optim.model.train()
    for start in range(0, n, micro_batch):
        part = slice(start, start + micro_batch)
        loss = weight * sft_loss(policy, optim.model, prompts[part], targets[part], n)
        optim.backward(loss, "SFT loss")
        total += loss.item()
    return total


class SFTLearner:
    """Token-mean NLL of the kept text; weight decay on the adapter regularises toward π_ref."""

    def __init__(self, policy: Policy, lr: float, weight_decay: float = 0.01, micro_batch: int = 4) -> None:
        self.policy, self.micro_batch = policy, micro_batch
        self.optim = PolicyOptimizer(policy, lr, weight_decay=weight_decay)

    def step(self, prompts: Sequence[str], targets: Sequence[str]) -> StepStats:
        loss = accumulate_sft(self.policy, self.optim, prompts, targets, self.micro_batch)
        return StepStats(loss=loss, margin=0.0, accuracy=0.0, grad_norm=self.optim.apply("SFT"))

    def state_dict(self) -> dict:
        return self.optim.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optim.load_state_dict(state)


def edit_round(agent, next_prompts: NextPrompts) -> tuple[RoundLog, StepStats | None]:
    """One online episode of any agent with `act`/`learn`: show drafts, observe edits, learn from them."""
    prompts = next_prompts(agent.batch_size)
    drafts = agent.act(prompts)
    return observed_round(agent, prompts, drafts, agent.editor.edit(prompts, drafts))


def observed_round(agent, prompts: list[str], drafts: list[str], edits: list[Edit | None],
                   pairs: list[PreferencePair] | None = None) -> tuple[RoundLog, StepStats | None]:
    """The rest of an episode once the user has edited the drafts: log it and let the agent learn."""
    pairs = [e.to_pair(x) for x, e in zip(prompts, edits) if e is not None] if pairs is None else pairs
    return RoundLog.edited(prompts, drafts, edits, pairs), agent.learn(prompts, drafts, edits)


@dataclass
class FloorAgent(Defaults):
    """The protocol's floor: π_0's answers, never learning."""

    policy: Policy
    editor: Editor | None
    batch_size: int = 8

    def act(self, prompts: list[str]) -> list[str]:
        return [s[0] for s in self.policy.sample(prompts, 1, use_reference=True)]

    def learn(self, prompts: list[str], drafts: list[str], edits: list[Edit | None]) -> None:
        return None

    def round(self, next_prompts: NextPrompts) -> tuple[RoundLog, StepStats | None]:
        return edit_round(self, next_prompts)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass  # nothing trains


def told(prompts: Sequence[str], describe_user: Callable[[str], str]) -> list[list[dict]]:
    """Each prompt as a chat whose system message states its user's preference (how the oracle answers)."""
    return [[{"role": "system", "content": describe_user(x)}, {"role": "user", "content": x}] for x in prompts]


@dataclass
class OracleAgent(FloorAgent):
    """The protocol's ceiling: π_0 told each user's true preference in a system prompt, never learning."""

    describe_user: Callable[[str], str] = lambda prompt: ""

    def act(self, prompts: list[str]) -> list[str]:
        return [s[0] for s in self.policy.sample(told(prompts, self.describe_user), 1, use_reference=True)]

    def shown(self) -> Shown:
        return Shown(self.policy, self.describe_user)


@dataclass
class HeadroomAgent(FloorAgent):
    """What choosing well among π_0's own answers could save, with no learning: of k samples of π_0 it
    shows the one its user would edit least (the true editor consulted before showing; a bound that no
    learner reaches without changing π, and that a learner beating π_0 must approach)."""

    k: int = 8

    def act(self, prompts: list[str]) -> list[str]:
        return self.least_edited(prompts)[0]

    def round(self, next_prompts: NextPrompts) -> tuple[RoundLog, StepStats | None]:
        prompts = next_prompts(self.batch_size)
        return observed_round(self, prompts, *self.least_edited(prompts))  # the editor already answered

    def least_edited(self, prompts: list[str]) -> tuple[list[str], list[Edit | None]]:
        """Each prompt's least-edited sample of π_0 and its user's edit of it."""
        drafts, edits = [], []
        for prompt, responses in zip(prompts, self.policy.sample(prompts, self.k, use_reference=True)):
            answers = self.editor.edit([prompt] * len(responses), responses)
            costs = edit_costs(responses, answers)
            best = costs.index(min(costs))
            drafts.append(responses[best])
            edits.append(answers[best])
        return drafts, edits


@dataclass
class SFTAgent(Defaults):
    policy: Policy
    learner: SFTLearner
    editor: Editor | None
    batch_size: int = 8

    def act(self, prompts: list[str]) -> list[str]:
        return [s[0] for s in self.policy.sample(prompts, 1)]

    def learn(self, prompts: list[str], drafts: list[str], edits: list[Edit | None]) -> StepStats:
        return self.learner.step(prompts, [kept_text(y, e) for y, e in zip(drafts, edits)])

    def round(self, next_prompts: NextPrompts) -> tuple[RoundLog, StepStats]:
        return edit_round(self, next_prompts)


class CostModel:
    """Ridge regression of the normalised edit cost c/words(y) on [e(y), e(x)⊙e(y)]."""

    def __init__(self, l2: float = 1.0) -> None:
        self.l2, self.features, self.targets, self.weights = l2, [], [], None

    @staticmethod
    def featurize(prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        from corll.reward_model import reward_features

        return torch.cat([reward_features(prompts, responses, "embeddings"), torch.ones(len(responses), 1)], dim=-1)

    def observe(self, prompts: Sequence[str], responses: Sequence[str], costs: Sequence[int]) -> None:
        self.features.append(self.featurize(prompts, responses))
        self.targets += [relative_cost(y, c) for y, c in zip(responses, costs)]
        x, y = torch.cat(self.features), torch.tensor(self.targets)
        self.weights = torch.linalg.solve(x.T @ x + self.l2 * torch.eye(x.shape[1]), x.T @ y)

    def state_dict(self) -> dict:
        return {"features": [f.clone() for f in self.features], "targets": list(self.targets), "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        self.features, self.targets, self.weights = state["features"], state["targets"], state["weights"]

    def predict(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        if self.weights is None:
            return [0.0] * len(responses)
        return (self.featurize(prompts, responses) @ self.weights).tolist()

    def rank(self, prompts: Sequence[str], samples: Sequence[Sequence[str]]) -> tuple[list[str], list[PreferencePair]]:
        """Per prompt, the sample with the lowest predicted cost, and the pairs (lowest ≻ highest predicted
        cost) where the two differ: the cost signal as preferences, since only a shown sample's cost is seen."""
        k = len(samples[0])
        predicted = self.predict([x for x in prompts for _ in range(k)], [y for s in samples for y in s])
        lowest, pairs = [], []
        for i, (x, ys) in enumerate(zip(prompts, samples)):
            c = predicted[i * k : (i + 1) * k]
            low, high = min(range(k), key=c.__getitem__), max(range(k), key=c.__getitem__)
            lowest.append(ys[low])
            if c[high] > c[low] and ys[high] != ys[low]:
                pairs.append(PreferencePair(x, ys[low], ys[high]))
        return lowest, pairs


@dataclass
class CostAgent(Defaults):
    policy: Policy
    learner: DPOLearner
    editor: Editor | None
    k: int = 4
    batch_size: int = 8
    model: CostModel = field(default_factory=CostModel)
    pending: list[PreferencePair] = field(default_factory=list)

    def act(self, prompts: list[str]) -> list[str]:
        drafts, self.pending = self.model.rank(prompts, self.policy.sample(prompts, self.k))
        return drafts

    def learn(self, prompts: list[str], drafts: list[str], edits: list[Edit | None]) -> StepStats | None:
        """Refit the cost model on the observed costs; step on the pairs of its own last act, if any."""
        self.model.observe(prompts, drafts, edit_costs(drafts, edits))
        pairs, self.pending = self.pending, []
        return self.learner.step(pairs) if pairs else None

    def state_dict(self) -> dict:
        return {"learner": self.learner.state_dict(), "cost_model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.learner.load_state_dict(state["learner"])
        self.model.load_state_dict(state["cost_model"])

    def round(self, next_prompts: NextPrompts) -> tuple[RoundLog, StepStats | None]:
        prompts = next_prompts(self.batch_size)
        drafts = self.act(prompts)
        return observed_round(self, prompts, drafts, self.editor.edit(prompts, drafts), list(self.pending))


class EarlyEnsemble(Defaults):
    """One model, one step on w_pref·DPO(ȳ ≻ y) + w_sft·SFT(kept text) + w_cost·DPO(cost-ranked samples)."""

    def __init__(self, policy: Policy, dpo: DPOLearner, editor: Editor, *, k: int = 2, batch_size: int = 8,
                 preference_weight: float = 1.0, sft_weight: float = 1.0, cost_weight: float = 1.0) -> None:
        self.policy, self.dpo, self.editor = policy, dpo, editor
        self.k, self.batch_size = k, batch_size
        self.preference_weight, self.sft_weight, self.cost_weight = preference_weight, sft_weight, cost_weight
        self.model = CostModel()
        self.pending: list[PreferencePair] = []  # cost pairs among the samples of the last act

    def act(self, prompts: list[str]) -> list[str]:
        samples = self.policy.sample(prompts, self.k)
        _, self.pending = self.model.rank(prompts, samples)
        return pick(samples, implicit_rewards(self.policy, prompts, samples, self.dpo.config.beta))

    def learn(self, prompts: list[str], drafts: list[str], edits: list[Edit | None]) -> StepStats:
        """One step on the weighted sum, accumulated in micro-batches: memory stays that of one micro-batch
        however many pairs of both kinds a round brings."""
        self.model.observe(prompts, drafts, edit_costs(drafts, edits))
        preference = [e.to_pair(x) for x, e in zip(prompts, edits) if e is not None]
        cost, self.pending = self.pending, []
        loss = accumulate_sft(self.policy, self.dpo.optim, prompts, [kept_text(y, e) for y, e in zip(drafts, edits)],
                              weight=self.sft_weight)
        for weight, pairs in ((self.preference_weight, preference), (self.cost_weight, cost)):
            if pairs:
                loss += self.dpo.accumulate_gradients(pairs, weight)["loss"]
        return StepStats(loss=loss, margin=0.0, accuracy=0.0, grad_norm=self.dpo.optim.apply("early ensemble"))

    def round(self, next_prompts: NextPrompts) -> tuple[RoundLog, StepStats]:
        return edit_round(self, next_prompts)

    def state_dict(self) -> dict:
        return {"dpo": self.dpo.state_dict(), "cost_model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.dpo.load_state_dict(state["dpo"])
        self.model.load_state_dict(state["cost_model"])


class Exp3:
    """EXP3 over arms with losses in [0, 1] (here: normalised edit cost); seeded through torch."""

    def __init__(self, arms: int, gamma: float = 0.2) -> None:
        self.arms, self.gamma = arms, gamma
        self.log_weights = [0.0] * arms

    def probabilities(self) -> list[float]:
        top = max(self.log_weights)
        w = [math.exp(v - top) for v in self.log_weights]
        return [(1 - self.gamma) * x / sum(w) + self.gamma / self.arms for x in w]

    def choose(self) -> int:
        return int(torch.multinomial(torch.tensor(self.probabilities()), 1).item())

    def update(self, arm: int, loss: float) -> None:
        p = self.probabilities()[arm]
        self.log_weights[arm] -= self.gamma * min(1.0, max(0.0, loss)) / (p * self.arms)


class LateEnsemble(Defaults):
    """Separately trained learners; a bandit over their observed edit cost chooses who answers each episode
    (each response), so it gets as many chances to learn whom to trust as there are episodes."""

    def __init__(self, agents: Sequence, editor: Editor, *, batch_size: int = 8,
                 names: Sequence[str] = ()) -> None:
        self.agents, self.editor, self.batch_size = list(agents), editor, batch_size
        self.names = list(names) or [type(a).__name__ for a in self.agents]
        self.bandit = Exp3(len(self.agents))
        self.chosen: list[int] = []
        self.current: list[int] | None = None  # who answered each prompt whose draft is out for editing

    def act(self, prompts: list[str]) -> list[str]:
        self.current = [self.bandit.choose() for _ in prompts]
        self.chosen += self.current
        drafts = [""] * len(prompts)
        for i, member in enumerate(self.agents):
            mine = [j for j, arm in enumerate(self.current) if arm == i]
            if mine:
                for j, draft in zip(mine, member.act([prompts[j] for j in mine])):
                    drafts[j] = draft
        return drafts

    def learn(self, prompts: list[str], drafts: list[str], edits: list[Edit | None]) -> StepStats | None:
        """Charge each answering member its normalised edit cost (no one in the offline phase, where π_0
        answered), then let every member learn from all the edits. Reports the step of the member that
        answered most of the round."""
        arms, self.current = self.current, None
        if arms is not None:
            for arm, draft, cost in zip(arms, drafts, edit_costs(drafts, edits)):
                self.bandit.update(arm, relative_cost(draft, cost))
        steps = [member.learn(prompts, drafts, edits) for member in self.agents]
        return steps[max(set(arms), key=arms.count) if arms else 0]

    def round(self, next_prompts: NextPrompts) -> tuple[RoundLog, StepStats | None]:
        return edit_round(self, next_prompts)

    def shown(self) -> Shown:
        """The policy of the member the bandit now trusts most: what the ensemble is evaluated as."""
        p = self.bandit.probabilities()
        return Shown(self.agents[max(range(len(p)), key=p.__getitem__)].policy)

    def summary(self) -> dict:
        """Whom the bandit let answer, episode by episode, and how far it trusts each member at the end."""
        return {"chosen": [self.names[i] for i in self.chosen],
                "trust": dict(zip(self.names, self.bandit.probabilities()))}

    def state_dict(self) -> dict:
        """Every member's weights and training state (they train separate adapters), and the bandit."""
        return {"members": [{"trainable": a.policy.trainable_state(), "state": a.state_dict()} for a in self.agents],
                "bandit": list(self.bandit.log_weights), "chosen": list(self.chosen)}

    def load_state_dict(self, state: dict) -> None:
        for agent, saved in zip(self.agents, state["members"]):
            agent.policy.load_trainable_state(saved["trainable"])
            agent.load_state_dict(saved["state"])
        self.bandit.log_weights, self.chosen = list(state["bandit"]), list(state["chosen"])
