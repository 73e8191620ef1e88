"""Learning from reactions on the tiny model: RLUF raises the love rate; KTO and weights behave."""

import pytest

from corll.config import parse_weights
from corll.learners import KTOConfig, KTOLearner
from corll.learners.kto import Reaction
from corll.simulate import ConfigError, RunDir, run_simulation
from tests.conftest import tiny_config


@pytest.mark.parametrize("algorithm", ["rluf", "rloo"])
def test_policy_gradient_raises_the_love_rate_on_a_synthetic_reaction_user(tmp_path, algorithm):
    config = tiny_config(task="synthetic-reactions", algorithms=[algorithm], weights="love=1", rounds=12,
                         eval_prompts=16, eval_samples=2)
    summary = run_simulation(config, tmp_path / "run")
    records = RunDir(tmp_path / "run").read_metrics()
    curve = [r["reward"] for r in records]  # expected love rate at rounds 0, 5, 10 and 12; ~0.1 at the start
    # The mean of the last two evaluations, 0.05 above the first. One evaluation of 32 responses has an SE of
    # ~0.03: over 11 seeds (8 RLOO, 3 RLUF) the last evaluation rose 0.09-0.26 and the mean of the last two
    # 0.10-0.29, so "the last rose 0.1" failed by chance (2 of those seeds, and a GPU's random stream).
    assert (curve[-1] + curve[-2]) / 2 > curve[0] + 0.05, curve
    assert "distinct_2" in records[-1]
    assert isinstance(summary[algorithm]["monitor_flags"], list)


def test_kto_step_moves_loved_responses_up_and_silenced_ones_down(policy):
    learner = KTOLearner(policy, KTOConfig(lr=5e-2))
    examples = [Reaction("word 1", "aaaa", True), Reaction("word 2", "ZZZZ", False),
                Reaction("word 3", "QQQQ", False), Reaction("word 4", "XXXX", False)]
    before = policy.logprobs([e.prompt for e in examples], [e.response for e in examples])
    for _ in range(5):
        learner.step(examples)
    change = policy.logprobs([e.prompt for e in examples], [e.response for e in examples]) - before
    assert change[0] > 0 and (change[1:] < 0).all(), change


@pytest.mark.parametrize(("spec", "message"), [
    ("love=-1,help=1", "must not be negative"),
    ("love=0,help=0", "all zero"),
    ("love", "not name=number"),
    ("love=abc", "not name=number"),
    ("", "at least one objective"),
])
def test_bad_weights_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_weights(spec)
    with pytest.raises(ConfigError, match=message):
        tiny_config(task="synthetic-reactions", algorithms=["rluf"], weights=spec).validate()


def test_reaction_learners_refuse_tasks_without_reactions(tmp_path):
    with pytest.raises(ConfigError, match="needs a reaction task"):
        run_simulation(tiny_config(algorithms=["kto"]), tmp_path / "run")
    assert parse_weights("love=1, help=0.5") == {"love": 1.0, "help": 0.5}


def test_leave_one_out_advantage_by_hand():
    import torch

    from corll.learners.rluf import leave_one_out

    advantage = leave_one_out(torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 4.0]]))
    assert advantage.tolist() == [[-1.5, 0.0, 1.5], [-2.0, -2.0, 4.0]]
