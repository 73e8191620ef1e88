"""Seed 003's protocol on the tiny model: an offline phase on logged edits, then online episodes,
against a floor that never learns and an oracle told each user's preference."""

import pytest
import torch

from corll.simulate import ConfigError, RunDir, run_simulation
from corll.tasks import load_task
from tests.conftest import tiny_config

PROTOCOL = dict(task="synthetic-personal", offline_edits=64, rounds=8, eval_every=4, checkpoint_every=4, k=2,
                max_new_tokens=3)


def cumulative_cost(tmp_path, algorithm: str) -> tuple[dict, list[dict]]:
    summary = run_simulation(tiny_config(algorithms=[algorithm], **PROTOCOL), tmp_path / algorithm)
    return summary[algorithm], RunDir(tmp_path / algorithm).read_metrics()


@pytest.fixture(scope="module")
def floor(tmp_path_factory):
    return cumulative_cost(tmp_path_factory.mktemp("floor"), "floor")


def test_the_floor_never_learns_and_its_costs_add_up(floor):
    summary, records = floor
    assert len({r["reward"] for r in records}) == 1  # the same held-out answers before and after
    assert summary["cumulative_cost"] == records[-1]["cumulative_cost"] == sum(r["cost_sum"] for r in records) > 0
    assert summary["offline_edited"] > 0 and 0 <= summary["no_edit_share"] <= 1
    assert summary["episodes"] == 8 * 8 and summary["cost_per_episode"] == summary["cumulative_cost"] / 64


@pytest.mark.parametrize("algorithm", ["corll", "sft", "cost", "ensemble-early", "ensemble-late"])
def test_each_learner_needs_fewer_edits_online_than_the_floor(tmp_path, floor, algorithm):
    summary, _ = cumulative_cost(tmp_path, algorithm)
    assert summary["cost_per_episode"] < 0.9 * floor[0]["cost_per_episode"], (summary, floor[0])


def test_the_oracle_is_told_each_users_preference(tmp_path):
    task = load_task("synthetic-personal", None)
    assert task.describe_user("word 2") != task.describe_user("word 3")
    summary, records = cumulative_cost(tmp_path, "oracle")
    assert summary["cumulative_cost"] > 0 and len({r["reward"] for r in records}) == 1


def test_the_oracle_needs_a_task_that_describes_its_users(tmp_path):
    with pytest.raises(ConfigError, match="oracle needs a task that describes"):
        run_simulation(tiny_config(algorithms=["oracle"], rounds=1), tmp_path / "run")


def test_offline_edits_need_an_edit_learner(tmp_path):
    with pytest.raises(ConfigError, match="--offline-edits needs an edit learner"):
        run_simulation(tiny_config(algorithms=["dueling"], offline_edits=8, rounds=1), tmp_path / "run")


def test_the_llm_editor_leaves_fitting_drafts_and_rewrites_the_others(policy):
    from corll.users import LLMEditor

    task = load_task("synthetic-personal", None)
    editor = LLMEditor(task, policy)
    torch.manual_seed(0)
    edits = editor.edit(["word 2", "word 2", "word 3"], ["abc", "ABC", "7 up"])
    assert edits[0] is None and edits[2] is None  # "abc" starts lowercase; "7 up" starts with a digit
    assert edits[1] is not None and edits[1].draft == "ABC" and edits[1].text.strip() and edits[1].text != "ABC"
    assert edits[1].draft_reward == -1.0  # the judge: one word to fix


def test_the_llm_editor_needs_a_task_that_describes_its_users(policy):
    from corll.users import LLMEditor

    with pytest.raises(ValueError, match="LLM editor needs a task"):
        LLMEditor(load_task("synthetic", None), policy)
