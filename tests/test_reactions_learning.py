"""Learning from reactions on the tiny model: RLUF raises the love rate; KTO and weights behave."""

import pytest

from corll.learners import KTOConfig, KTOLearner, parse_weights
from corll.learners.kto import Reaction
from corll.simulate import ConfigError, RunDir, run_simulation
from tests.conftest import tiny_config


def test_rluf_raises_the_love_rate_on_a_synthetic_reaction_user(tmp_path):
    config = tiny_config(task="synthetic-reactions", algorithms=["rluf"], weights="love=1", rounds=12,
                         eval_prompts=16, eval_samples=2)
    run_simulation(config, tmp_path / "run")
    curve = [r["reward"] for r in RunDir(tmp_path / "run").read_metrics()]
    assert curve[-1] > curve[0] + 0.1, curve  # expected love rate, from ~0.08 at the start
    assert "distinct_2" in RunDir(tmp_path / "run").read_metrics()[-1]


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


def test_rloo_raises_the_love_rate_on_a_synthetic_reaction_user(tmp_path):
    config = tiny_config(task="synthetic-reactions", algorithms=["rloo"], weights="love=1", rounds=12,
                         eval_prompts=16, eval_samples=2)
    summary = run_simulation(config, tmp_path / "run")
    curve = [r["reward"] for r in RunDir(tmp_path / "run").read_metrics()]
    assert curve[-1] > curve[0] + 0.1, curve
    assert isinstance(summary["rloo"]["monitor_flags"], list)
