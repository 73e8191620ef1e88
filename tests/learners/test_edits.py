"""Seed 003's learners on the tiny model: each learns; the late ensemble's bandit finds the cheapest learner."""

import math

import pytest
import torch

from corll.feedback import Edit, PreferencePair, edit_costs, relative_cost
from corll.learners.dpo import DPOConfig, DPOLearner
from corll.learners.edits import EarlyEnsemble, Exp3, LateEnsemble, kept_text, sft_loss
from corll.simulate import RunDir, run_simulation
from tests.conftest import interrupt_at, tiny_config, without_time


# The late ensemble lets its bandit pick members by observed edit cost, so it is tested where R* is minus
# that cost (synthetic-personal); on `synthetic` (R* = lowercase share) cost and R* disagree on gibberish.
@pytest.mark.parametrize(("algorithm", "task"), [("sft", "synthetic"), ("ensemble-early", "synthetic"),
                                                 ("ensemble-late", "synthetic-personal")])
def test_each_edit_learner_raises_held_out_reward_and_records_costs(tmp_path, algorithm, task):
    run_simulation(tiny_config(task=task, algorithms=[algorithm], rounds=12, eval_every=6), tmp_path / "run")
    records = RunDir(tmp_path / "run").read_metrics()
    assert records[-1]["reward"] > records[0]["reward"] + 0.05, [r["reward"] for r in records]
    assert records[-1]["cost_sum"] > 0 and 0 <= records[-1]["no_edit_share"] <= 1


def test_the_cost_model_learns_which_responses_need_more_editing():
    from corll.learners.edits import CostModel

    polite = ["Thank you, here is the summary you asked for.", "Sure, here are the key points in brief.",
              "Happy to help: the article says the park opened.", "Here is a short, friendly summary."]
    rude = ["WHATEVER. READ IT YOURSELF.", "NO SUMMARY. TOO LONG.", "UGH, FINE: PARK. DONE.", "STOP ASKING ME THINGS."]
    model = CostModel()
    model.observe(["Summarize."] * 8, polite + rude, [0, 0, 0, 0, 6, 5, 6, 5])
    predicted = model.predict(["Summarize."] * 2, ["Here is a brief and kind summary.", "NO. GO AWAY NOW."])
    assert predicted[0] < predicted[1], predicted


def test_exp3_concentrates_on_the_arm_with_the_lowest_cost():
    torch.manual_seed(0)
    bandit = Exp3(3, gamma=0.1)
    costs = [0.9, 0.1, 0.6]  # arm 1 needs the fewest edits
    picks = []
    for _ in range(300):
        arm = bandit.choose()
        picks.append(arm)
        bandit.update(arm, costs[arm])
    assert picks[-100:].count(1) > 80
    assert max(range(3), key=bandit.probabilities().__getitem__) == 1


class Fixed:
    """A member that always answers the same text and never learns."""

    def __init__(self, text: str) -> None:
        self.text = self.policy = text  # the text stands in for the member's policy

    def act(self, prompts):
        return [self.text] * len(prompts)

    def learn(self, prompts, drafts, edits):
        return None


class Picky:
    """A user who keeps 'short fine answer' and otherwise rewrites the draft to it."""

    def edit(self, prompts, drafts):
        return [None if y == "short fine answer" else Edit(draft=y, text="short fine answer") for y in drafts]


def test_the_late_ensemble_lets_the_cheapest_member_answer():
    torch.manual_seed(0)
    members = [Fixed("a long answer that the user rewrites"), Fixed("short fine answer"), Fixed("short bad one")]
    ensemble = LateEnsemble(members, Picky(), batch_size=8)
    costs = []
    for _ in range(30):
        log, _ = ensemble.round(lambda n: ["x"] * n)
        costs.append(sum(log.costs))
    assert len(ensemble.chosen) == 30 * 8
    assert ensemble.chosen[-80:].count(1) > 60  # the member whose drafts need no edit answers
    assert ensemble.shown().policy == "short fine answer"  # and is the one evaluated and saved
    assert sum(costs[-10:]) < sum(costs[:10]) / 2


def test_costs_and_kept_text_by_hand():
    edit = Edit(draft="a b c", text="a x c d")
    assert edit_costs(["a b c", "same"], [edit, None]) == [2, 0]
    assert relative_cost("a b c", 2) == pytest.approx(2 / 3) and relative_cost("", 0) == 0.0
    assert kept_text("same", None) == "same" and kept_text("a b c", edit) == "a x c d"


def test_the_early_ensemble_adds_its_three_weighted_losses(policy):
    """At the start π = π_ref, so every DPO term is log 2: the weights can be read off the total."""
    prompts, drafts = ["ab", "cd", "ef"], ["x y", "z", "w"]
    edits = [Edit(draft="x y", text="x q y"), Edit(draft="z", text="z z"), None]
    ensemble = EarlyEnsemble(policy, DPOLearner(policy, DPOConfig(lr=1e-3)), editor=None,
                             preference_weight=2.0, sft_weight=0.5, cost_weight=3.0)
    ensemble.pending = [PreferencePair("ab", "x y", "y x")]  # a cost pair from the last act
    with torch.no_grad():
        sft = sft_loss(policy, ensemble.dpo.optim.model, prompts, ["x q y", "z z", "w"], 3).item()
    stats = ensemble.learn(prompts, drafts, edits)
    assert stats.loss == pytest.approx(0.5 * sft + 2.0 * math.log(2) + 3.0 * math.log(2), rel=1e-4)
    assert ensemble.model.targets == [0.5, 1.0, 0.0]  # normalised costs: 1 of 2 words, 1 of 1, kept
    assert ensemble.pending == []  # the cost pairs are used once


def test_an_interrupted_late_ensemble_resumes_exactly(tmp_path):
    config = tiny_config(algorithms=["ensemble-late"], rounds=4, eval_every=2, checkpoint_every=2)
    full = run_simulation(config, tmp_path / "full")
    interrupt_at(lambda progress: run_simulation(config, tmp_path / "cut", progress=progress), "ensemble-late", 3)
    cut = run_simulation(config, tmp_path / "cut", resume=True)
    # the bandit's choices are reported by name, one per online round, and survive the interruption
    chosen = full["ensemble-late"]["chosen"]
    assert len(chosen) == 4 * 8 and set(chosen) <= {"preference", "sft", "cost"}  # one per episode
    assert cut["ensemble-late"]["chosen"] == chosen
    trust = full["ensemble-late"]["trust"]  # the bandit's final probabilities: the most trusted is evaluated
    assert set(trust) == {"preference", "sft", "cost"} and sum(trust.values()) == pytest.approx(1.0)
    assert min(trust.values()) >= 0.2 / 3 - 1e-9 and cut["ensemble-late"]["trust"] == trust  # EXP3's γ/K floor
    cut_records, full_records = (RunDir(tmp_path / n).read_metrics() for n in ("cut", "full"))
    assert without_time(cut_records) == without_time(full_records)


def test_headroom_shows_the_least_edited_of_its_samples_and_asks_its_user_once():
    from corll.learners.edits import HeadroomAgent
    from corll.users import LocalEditor
    from corll.tasks.synthetic import build_personal

    class Samples:  # π_0 stand-in: the same three answers to every prompt
        def sample(self, prompts, k, use_reference=False):
            return [["X y", "7 ok", "b c"][:k] for _ in prompts]

    editor = LocalEditor(build_personal())
    asked = []
    edit = editor.edit
    editor.edit = lambda xs, ys: asked.extend(ys) or edit(xs, ys)
    agent = HeadroomAgent(policy=Samples(), editor=editor, batch_size=2, k=3)
    # prompt 1's user accepts a lowercase letter or a digit first; only "7 ok" and "b c" need no edit;
    # prompt 2's user accepts lowercase only
    assert agent.act(["word 1", "word 2"]) == ["7 ok", "b c"]
    asked.clear()
    log, stats = agent.round(lambda n: ["word 2", "word 1"][:n])
    assert log.shown == [("word 2", "b c"), ("word 1", "7 ok")] and log.costs == [0, 0] and stats is None
    assert len(asked) == 6  # k answers per prompt, none asked again for the draft shown


def test_costs_are_kept_per_source_and_headroom_is_edited_less_than_the_floor(tmp_path):
    config = tiny_config(task="synthetic-personal", algorithms=["floor", "headroom"], rounds=4, k=8, batch_size=8,
                         eval_every=4)
    summary = run_simulation(config, tmp_path / "run")
    last = {r["algorithm"]: r for r in RunDir(tmp_path / "run").read_metrics() if r["round"] == 4}
    for record in last.values():
        assert set(record["cost_by_source"]) == set(record["shown_by_source"]) == {"lower", "lower-or-digit"}
        assert sum(record["cost_by_source"].values()) == record["cumulative_cost"]
        assert sum(record["shown_by_source"].values()) == record["queries"] == 32
    assert last["headroom"]["cumulative_cost"] < last["floor"]["cumulative_cost"], summary
