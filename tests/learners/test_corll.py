"""CoRLL's round, line by line against Algorithm 1, with a scripted policy, user and DPO step."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from corll.feedback import Edit, PreferencePair
from corll.learners.corll import CoRLL, RankAgreement, pick
from corll.learners.rounds import MAX_DRAWS


class ScriptedPolicy:
    """Samples "x/0" .. "x/k-1" per prompt; log π of sample i is i/10 above log π_0, except that sample 1
    of every prompt is the implicit-reward argmax (log π − log π_0 = 1)."""

    def sample(self, prompts, k):
        return [[f"{x}/{i}" for i in range(k)] for x in prompts]

    def sample_scored(self, prompts, k):
        gain = torch.tensor([1.0 if i == 1 else i / 10 for i in range(k)])
        return self.sample(prompts, k), gain.repeat(len(prompts), 1)

    def logprobs(self, prompts, responses, reference=False):
        assert reference
        return torch.zeros(len(responses))


@dataclass
class StepRecorder:
    config: object = field(default_factory=lambda: type("C", (), {"beta": 0.5})())
    steps: list[list[PreferencePair]] = field(default_factory=list)

    def step(self, pairs):
        self.steps.append(list(pairs))
        return f"step {len(self.steps)}"


class KeepsOddPrompts:
    """Keeps the drafts of prompts that end in an odd digit; rewrites the others to 'better'."""

    def __init__(self) -> None:
        self.shown: list[str] = []

    def edit(self, prompts, drafts):
        self.shown += drafts
        return [None if int(x[-1]) % 2 else Edit(draft=y, text="better") for x, y in zip(prompts, drafts)]


def counter():
    n = iter(range(1000))
    return lambda k: [f"p{next(n)}" for _ in range(k)]


def test_a_round_shows_the_argmax_takes_edits_until_n_preferences_then_one_step():
    learner, user = StepRecorder(), KeepsOddPrompts()
    corll = CoRLL(ScriptedPolicy(), learner, user, k=3, batch_size=4)
    log, stats = corll.round(counter())
    # y_t = argmax_i β(log π − log π_0): sample 1 of every prompt
    assert all(y.endswith("/1") for y in user.shown)
    # users keep the drafts of odd prompts: it asked again (4 prompts, then the 2 missing, then 1) until 4
    # preferences were in
    assert [x for x, _ in log.shown] == ["p0", "p1", "p2", "p3", "p4", "p5", "p6"]
    assert [(p.prompt, p.chosen, p.rejected) for p in log.pairs] == [
        ("p0", "better", "p0/1"), ("p2", "better", "p2/1"), ("p4", "better", "p4/1"), ("p6", "better", "p6/1")]
    assert log.skipped == 3 and log.queries == 7 and log.costs == [3, 0, 3, 0, 3, 0, 3]  # "pN/1" is 3 tokens
    assert learner.steps == [log.pairs] and stats == "step 1"  # one DPO step on exactly those N


def test_users_who_never_edit_give_no_step_and_the_round_stops_after_max_draws():
    class KeepsAll:
        def edit(self, prompts, drafts):
            return [None] * len(drafts)

    learner = StepRecorder()
    log, stats = CoRLL(ScriptedPolicy(), learner, KeepsAll(), k=2, batch_size=3).round(counter())
    assert log.queries == 3 * MAX_DRAWS and log.pairs == [] and stats is None and learner.steps == []


def test_k_1_shows_the_sample_itself_and_learn_steps_on_logged_edits_only():
    learner = StepRecorder()
    corll = CoRLL(ScriptedPolicy(), learner, None, k=1)
    assert corll.act(["a", "b"]) == ["a/0", "b/0"]
    assert corll.learn(["a", "b"], ["a/0", "b/0"], [None, None]) is None and learner.steps == []
    corll.learn(["a", "b"], ["a/0", "b/0"], [None, Edit(draft="b/0", text="fixed")])
    assert [(p.prompt, p.chosen, p.rejected) for p in learner.steps[0]] == [("b", "fixed", "b/0")]


def test_rank_agreement_logs_each_drafts_candidates_and_their_implicit_rewards():
    corll, prompts = RankAgreement(ScriptedPolicy(), StepRecorder(), KeepsOddPrompts(), k=3, batch_size=2), counter()
    log, _ = corll.round(prompts)
    assert [(x, ys) for x, ys, _ in log.candidates] == [(x, [f"{x}/{i}" for i in range(3)]) for x, _ in log.shown]
    assert log.candidates[0][2] == pytest.approx([0.0, 0.5, 0.1])  # β · (log π − log π_0), β = 0.5
    later, _ = corll.round(prompts)
    assert [x for x, _, _ in later.candidates] == [x for x, _ in later.shown] == ["p3", "p4", "p5", "p6"]  # its own


def test_pick_takes_each_rows_highest_reward():
    assert pick([["a", "b"], ["c", "d"]], torch.tensor([[0.1, 0.2], [0.3, -1.0]])) == ["b", "c"]
